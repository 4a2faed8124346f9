"""A small hand-written English grammar that emits sentences together with their exact UD trees.

It exists so that the default run works fully offline: the syntax analyses need gold trees,
and with no treebank mirror or network this grammar supplies them, with no annotation errors
to blur the results. Trees follow the UD English (EWT) conventions: punctuation attaches to
the root or to the clause it closes (the comma after a fronted adverbial clause to that
clause's head, a comma in a coordination to the following conjunct), ``to`` and ``that`` are
``mark`` (but "when" is ``advmod``), copulas and auxiliaries depend on the predicate, and "not"
is ``advmod``.

Every phrase is built as a contiguous span whose dependents attach inside it, so all trees
are projective. Agreement is exact: the verb (or auxiliary / copula) agrees with its subject,
coordinated subjects are plural, and ``a``/``an`` follows the next word.
"""
from __future__ import annotations

import random

from .conllu_io import Sentence

__all__ = ["generate_treebank", "RELATIONS"]

# Relations the grammar can produce (the tests check that a modest sample covers them all).
RELATIONS = frozenset({
    "root", "nsubj", "obj", "obl", "nmod", "nmod:poss", "amod", "det", "nummod", "compound", "case",
    "advmod", "aux", "cop", "cc", "conj", "mark", "advcl", "ccomp", "xcomp", "acl:relcl", "punct",
})


class _N:
    """A word in the making; ``head`` points at another _N (None for the phrase head)."""
    __slots__ = ("form", "upos", "head", "rel")

    def __init__(self, form: str, upos: str):
        self.form, self.upos, self.head, self.rel = form, upos, None, None


def _dep(node: _N, head: _N, rel: str) -> _N:
    node.head, node.rel = head, rel
    return node


def _pairs(spec: str) -> list[tuple[str, ...]]:
    return [tuple(x.split()) for x in spec.split("|")]


# ---- lexicon: nouns as (singular, plural) or (modifier, singular, plural) for compounds ----
_NOUNS = {
    "HUMAN": _pairs("teacher teachers|farmer farmers|child children|student students|doctor doctors|"
                    "neighbor neighbors|girl girls|boy boys|woman women|man men|pilot pilots|baker bakers|"
                    "artist artists|nurse nurses"),
    "ANIMAL": _pairs("dog dogs|cat cats|horse horses|rabbit rabbits|bird birds|goat goats"),
    "FOOD": _pairs("apple apples|cake cakes|sandwich sandwiches|orange oranges|cookie cookies|pie pies"),
    "TEXT": _pairs("book books|letter letters|story stories|map maps|newspaper newspapers|poem poems"),
    "OBJECT": _pairs("box boxes|chair chairs|car cars|bicycle bicycles|key keys|bottle bottles|"
                     "window windows|umbrella umbrellas|basket baskets"),
}
_COMPOUNDS = {
    "HUMAN": _pairs("police officer officers|bus driver drivers|farm worker workers|school teacher teachers"),
    "ANIMAL": _pairs("farm dog dogs|sheep dog dogs"),
    "FOOD": _pairs("apple pie pies|birthday cake cakes|cheese sandwich sandwiches"),
    "TEXT": _pairs("history book books|love letter letters|bedtime story stories"),
    "OBJECT": _pairs("kitchen table tables|coffee cup cups|paper bag bags|garden chair chairs"),
}
_ANIMATE = ("HUMAN", "ANIMAL")
_PROFESSIONS = _pairs("teacher teachers|farmer farmers|doctor doctors|pilot pilots|baker bakers|"
                      "artist artists|nurse nurses|student students")
# Listed in English adjective order (opinion, size, age, colour), kept when two are drawn.
_ADJ = {
    "HUMAN": "clever friendly happy quiet tired tall young old".split(),
    "ANIMAL": "friendly hungry quiet big small young old brown".split(),
    "FOOD": "delicious big small fresh warm sweet".split(),
    "TEXT": "strange long short old new".split(),
    "OBJECT": "broken heavy big small old new red blue".split(),
}
_CLASHES = [{"big", "small"}, {"young", "old"}, {"old", "new"}, {"long", "short"}]
_PRED_ADJ = {
    "HUMAN": "happy tired hungry busy ready quiet angry late sleepy".split(),
    "ANIMAL": "hungry tired happy quiet sleepy angry".split(),
    "FOOD": "fresh sweet warm delicious".split(),
    "TEXT": "long short strange interesting".split(),
    "OBJECT": "heavy old new broken red".split(),
}
# Prepositional modifiers of nouns (nmod) and places/times for obliques (obl).
_NMOD = {
    "HUMAN": [("with", "hat bag umbrella dog".split()), ("from", "village city school".split())],
    "ANIMAL": [("from", "farm village".split()), ("in", "garden yard".split())],
    "FOOD": [("from", "market bakery kitchen".split()), ("on", "plate table".split())],
    "TEXT": [("about", "war sea garden city".split()), ("from", "library".split())],
    "OBJECT": [("in", "kitchen garden hall".split()), ("near", "door window".split())],
}
_OBL_PLACE = [("in", "park garden kitchen library city village".split()), ("at", "station market school".split()),
              ("near", "river bridge".split()), ("behind", "house wall".split()), ("on", "beach".split())]
_OBL_TIME = [("after", "meeting storm concert".split()), ("before", "exam storm".split()),
             ("during", "night morning".split())]
_OBL = _OBL_PLACE + _OBL_TIME
_PLACE_ADJ = "old small big quiet busy".split()

# ---- verbs: base, 3sg, past, gerund, past participle; subject classes; object classes ----
def _verbs(spec: str) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    out = []
    for line in spec.strip().splitlines():
        forms, subj, obj = (part.split() for part in line.split(";"))
        subj = tuple(_ANIMATE if s == "ANIM" else (s,) for s in subj)
        obj = tuple(_ANIMATE if o == "ANIM" else (o,) for o in obj)
        out.append((tuple(forms), sum(subj, ()), sum(obj, ())))
    return out


_TRANSITIVE = _verbs("""
eat eats ate eating eaten; ANIM; FOOD
buy buys bought buying bought; HUMAN; FOOD TEXT OBJECT
find finds found finding found; ANIM; FOOD TEXT OBJECT ANIM
carry carries carried carrying carried; ANIM; FOOD OBJECT TEXT
read reads read reading read; HUMAN; TEXT
write writes wrote writing written; HUMAN; TEXT
paint paints painted painting painted; HUMAN; OBJECT
clean cleans cleaned cleaning cleaned; HUMAN; OBJECT
see sees saw seeing seen; ANIM; ANIM OBJECT
watch watches watched watching watched; ANIM; ANIM
follow follows followed following followed; ANIM; ANIM
help helps helped helping helped; HUMAN; ANIM
visit visits visited visiting visited; HUMAN; HUMAN
like likes liked liking liked; ANIM; FOOD ANIM
""")
_INTRANSITIVE = _verbs("""
sleep sleeps slept sleeping slept; ANIM;
laugh laughs laughed laughing laughed; HUMAN;
wait waits waited waiting waited; ANIM;
arrive arrives arrived arriving arrived; ANIM;
smile smiles smiled smiling smiled; HUMAN;
work works worked working worked; HUMAN;
swim swims swam swimming swum; ANIM;
run runs ran running run; ANIM;
sing sings sang singing sung; HUMAN ANIMAL;
dance dances danced dancing danced; HUMAN;
""")
_CCOMP_VERBS = _verbs("""
say says said saying said; HUMAN;
think thinks thought thinking thought; HUMAN;
know knows knew knowing known; HUMAN;
believe believes believed believing believed; HUMAN;
hope hopes hoped hoping hoped; HUMAN;
""")
_XCOMP_VERBS = _verbs("""
want wants wanted wanting wanted; ANIM;
try tries tried trying tried; ANIM;
need needs needed needing needed; ANIM;
plan plans planned planning planned; HUMAN;
decide decides decided deciding decided; HUMAN;
""")
_STATIVE = {"know", "believe", "want", "need", "like", "see"}
_PRE_ADV = "often always never usually sometimes".split()
_POST_ADV = "quickly slowly quietly carefully again here".split()
_DEGREE = "very quite really".split()
_MARKS = "because when while although if before after".split()  # "when" is ADV advmod in EWT
_NUMBERS = "two three four five six ten twelve 3 12 20".split()
_SUBJ_PRON = {"sg": ["he", "she"], "pl": ["they", "we", "you"]}
_OBJ_PRON = {"sg": ["him", "her"], "pl": ["them", "us"]}
_POSS = "my your his her our their".split()


def _choice(rng: random.Random, weighted: dict):
    keys = list(weighted)
    return rng.choices(keys, weights=[weighted[k] for k in keys])[0]


# ---- phrases: each returns (nodes in surface order, head node[, number or class]) ----
def _simple_np(rng, cls, number, allow_pron=False, role="subj"):
    """A noun phrase without clausal or prepositional modifiers; returns nodes, head, number."""
    if allow_pron and cls == "HUMAN" and rng.random() < 0.12:
        number = rng.choice(["sg", "pl"])
        table = _SUBJ_PRON if role == "subj" else _OBJ_PRON
        n = _N(rng.choice(table[number]), "PRON")
        return [n], n, number
    compound = rng.random() < 0.15
    entry = rng.choice(_COMPOUNDS[cls] if compound else _NOUNS[cls])
    head = _N(entry[-2] if number == "sg" else entry[-1], "NOUN")
    nodes: list[_N] = []
    d = _choice(rng, {"the": 45, "a": 25, "this": 6, "every": 3, "poss": 16} if number == "sg"
                else {"the": 40, "some": 10, "these": 6, "poss": 14, "num": 14, "none": 16})
    if d == "poss":
        nodes.append(_dep(_N(rng.choice(_POSS), "PRON"), head, "nmod:poss"))
    elif d == "num":
        nodes.append(_dep(_N(rng.choice(_NUMBERS), "NUM"), head, "nummod"))
    elif d != "none":
        nodes.append(_dep(_N(d, "DET"), head, "det"))
    adjs = rng.sample(_ADJ[cls], _choice(rng, {0: 60, 1: 32, 2: 8}))
    if len(adjs) == 2 and any(set(adjs) <= c for c in _CLASHES):
        adjs = adjs[:1]  # not "big small cake"
    for adj in sorted(adjs, key=_ADJ[cls].index):
        nodes.append(_dep(_N(adj, "ADJ"), head, "amod"))
    if compound:
        nodes.append(_dep(_N(entry[0], "NOUN"), head, "compound"))
    nodes.append(head)
    _fix_article(nodes)
    return nodes, head, number


def _fix_article(nodes: list[_N]) -> None:
    if nodes[0].form == "a" and len(nodes) > 1 and nodes[1].form[0] in "aeiou":
        nodes[0].form = "an"


def _pp(rng, prep, nouns, adj=False):
    """A prepositional phrase 'prep the (adj) noun'; the noun is the head, the preposition its case."""
    head = _N(rng.choice(nouns), "NOUN")
    nodes = [_N(prep, "ADP"), _N("the", "DET")]
    _dep(nodes[0], head, "case")
    _dep(nodes[1], head, "det")
    if adj and rng.random() < 0.3:
        nodes.append(_dep(_N(rng.choice(_PLACE_ADJ), "ADJ"), head, "amod"))
    return nodes + [head], head


def _np(rng, cls, number=None, role="subj"):
    """A full noun phrase, possibly with an nmod PP or (animates) a subject relative clause."""
    number = number or rng.choice(["sg", "sg", "pl"])
    nodes, head, number = _simple_np(rng, cls, number, allow_pron=True, role=role)
    if head.upos == "PRON":
        return nodes, head, number
    r = rng.random()
    if r < 0.15:
        prep, nouns = rng.choice(_NMOD[cls])
        pp, pp_head = _pp(rng, prep, nouns)
        _dep(pp_head, head, "nmod")
        nodes += pp
    elif r < 0.23 and cls in _ANIMATE:
        # subject relative clause: "the man who sings", verb agreeing with the head noun
        rel_nodes, rel_head = _relcl(rng, cls, number)
        _dep(rel_head, head, "acl:relcl")
        nodes += rel_nodes
    return nodes, head, number


def _relcl(rng, cls, number):
    verbs = [v for v in _TRANSITIVE + _INTRANSITIVE if cls in v[1]]
    forms, _, obj_classes = rng.choice(verbs)
    verb = _N(_finite(forms, number, rng.choice(["pres", "past"])), "VERB")
    who = _dep(_N("who" if cls == "HUMAN" else "that", "PRON"), verb, "nsubj")
    nodes = [who, verb]
    if obj_classes:
        obj, obj_head, _ = _simple_np(rng, rng.choice(obj_classes), rng.choice(["sg", "pl"]))
        _dep(obj_head, verb, "obj")
        nodes += obj
    return nodes, verb


def _finite(forms, number, tense):
    return forms[2] if tense == "past" else forms[1] if number == "sg" else forms[0]


def _subject(rng, classes):
    cls = rng.choice(classes)
    if rng.random() < 0.1:
        # coordinated subject "the cat and the dog": plural agreement, conj/cc on the second conjunct
        a, a_head, _ = _simple_np(rng, cls, rng.choice(["sg", "pl"]))
        b, b_head, _ = _simple_np(rng, cls, rng.choice(["sg", "pl"]))
        cc = _dep(_N("and", "CCONJ"), b_head, "cc")
        _dep(b_head, a_head, "conj")
        return a + [cc] + b, a_head, "pl", cls
    nodes, head, number = _np(rng, cls)
    return nodes, head, number, cls


def _verb_group(rng, forms, number, pred: _N):
    """Auxiliaries, negation and pre-verbal adverb for ``pred``; returns nodes before it, its form, the tense."""
    weights = {"pres": 30, "past": 25, "prog": 10, "perf": 10, "fut": 10, "modal": 7, "neg": 8}
    if forms[0] in _STATIVE:
        del weights["prog"]  # "is knowing", "is wanting" sound wrong
    tense = _choice(rng, weights)
    sg = number == "sg"
    pre: list[_N] = []
    if tense in ("pres", "past"):
        form = _finite(forms, number, tense)
    elif tense == "prog":
        pre.append(_N(rng.choice(["is", "was"] if sg else ["are", "were"]), "AUX"))
        form = forms[3]
    elif tense == "perf":
        pre.append(_N("has" if sg else "have", "AUX"))
        form = forms[4]
    elif tense in ("fut", "modal"):
        pre.append(_N("will" if tense == "fut" else rng.choice(["can", "should", "must"]), "AUX"))
        form = forms[0]
    else:  # do-support negation: "does not eat"
        pre.append(_N(rng.choice(["does" if sg else "do", "did"]), "AUX"))
        pre.append(_dep(_N("not", "PART"), pred, "advmod"))
        form = forms[0]
    for n in pre:
        if n.rel is None:
            _dep(n, pred, "aux")
    if tense != "neg" and rng.random() < 0.1:
        # "often eats", "has never seen": after the first auxiliary if there is one
        pre.insert(1 if pre else 0, _dep(_N(rng.choice(_PRE_ADV), "ADV"), pred, "advmod"))
    return pre, form, tense


def _vp_tail(rng, verb: _N, obj_classes, obj_list=True):
    """Object (possibly a list 'A, B and C'), oblique and manner adverb after the verb."""
    nodes: list[_N] = []
    if obj_classes:
        cls = rng.choice(obj_classes)
        if obj_list and cls not in _ANIMATE and rng.random() < 0.08:
            conjuncts = [_simple_np(rng, cls, rng.choice(["sg", "pl"]))[:2] for _ in range(rng.choice([2, 3]))]
            first = conjuncts[0][1]
            _dep(first, verb, "obj")
            nodes += conjuncts[0][0]
            for i, (c_nodes, c_head) in enumerate(conjuncts[1:], start=1):
                _dep(c_head, first, "conj")
                last = i == len(conjuncts) - 1
                # UD v2: commas and the conjunction attach to the conjunct that follows them
                sep = _N("and", "CCONJ") if last else _N(",", "PUNCT")
                _dep(sep, c_head, "cc" if last else "punct")
                nodes += [sep] + c_nodes
        else:
            obj, obj_head, _ = _np(rng, cls, role="obj")
            _dep(obj_head, verb, "obj")
            nodes += obj
    if rng.random() < 0.25:
        prep, nouns = rng.choice(_OBL)
        pp, pp_head = _pp(rng, prep, nouns, adj=(prep, nouns) in _OBL_PLACE)
        _dep(pp_head, verb, "obl")
        nodes += pp
    if rng.random() < 0.1:
        nodes.append(_dep(_N(rng.choice(_POST_ADV), "ADV"), verb, "advmod"))
    return nodes


def _verbal_clause(rng, pool, depth):
    forms, subj_classes, obj_classes = rng.choice(pool)
    subj, subj_head, number, cls = _subject(rng, subj_classes)
    verb = _N("", "VERB")
    _dep(subj_head, verb, "nsubj")
    pre, verb.form, tense = _verb_group(rng, forms, number, verb)
    nodes = subj + pre + [verb] + _vp_tail(rng, verb, obj_classes)
    if depth == 0 and not pre and rng.random() < 0.12:
        # VP coordination "eats the cake and sleeps": same tense, shared subject
        forms2, _, o2 = rng.choice([v for v in _TRANSITIVE + _INTRANSITIVE if cls in v[1]])
        verb2 = _dep(_N(_finite(forms2, number, tense), "VERB"), verb, "conj")
        cc = _dep(_N("and", "CCONJ"), verb2, "cc")
        nodes += [cc, verb2] + _vp_tail(rng, verb2, o2, obj_list=False)
    return nodes, verb


def _copular_clause(rng):
    cls = _choice(rng, {"HUMAN": 5, "ANIMAL": 2, "FOOD": 1, "TEXT": 1, "OBJECT": 1})
    subj, subj_head, number, cls = _subject(rng, [cls])
    sg = number == "sg"
    if cls == "HUMAN" and rng.random() < 0.3:
        # nominal predicate "is a (good) doctor" / "are doctors"
        sing, plur = rng.choice(_PROFESSIONS)
        pred = _N(sing if sg else plur, "NOUN")
        pred_nodes = [_dep(_N("a", "DET"), pred, "det")] if sg else []
        if rng.random() < 0.3:
            pred_nodes.append(_dep(_N(rng.choice(["good", "young", "busy", "famous"]), "ADJ"), pred, "amod"))
        pred_nodes.append(pred)
        _fix_article(pred_nodes)
    else:
        adjs = rng.sample(_PRED_ADJ[cls], 2)
        pred = _N(adjs[0], "ADJ")
        pred_nodes = []
        if rng.random() < 0.25:
            pred_nodes.append(_dep(_N(rng.choice(_DEGREE), "ADV"), pred, "advmod"))
        pred_nodes.append(pred)
        if rng.random() < 0.15:
            adj2 = _dep(_N(adjs[1], "ADJ"), pred, "conj")
            pred_nodes += [_dep(_N("and", "CCONJ"), adj2, "cc"), adj2]
    _dep(subj_head, pred, "nsubj")
    tense = _choice(rng, {"pres": 50, "past": 30, "fut": 10, "neg": 10})
    if tense == "pres":
        pre = [_N("is" if sg else "are", "AUX")]
    elif tense == "past":
        pre = [_N("was" if sg else "were", "AUX")]
    elif tense == "fut":
        pre = [_dep(_N("will", "AUX"), pred, "aux"), _N("be", "AUX")]
    else:
        pre = [_N("is" if sg else "are", "AUX"), _dep(_N("not", "PART"), pred, "advmod")]
    for n in pre:
        if n.rel is None:
            _dep(n, pred, "cop")
    nodes = subj + pre + pred_nodes
    if rng.random() < 0.12:
        prep, nouns = rng.choice(_OBL)
        pp, pp_head = _pp(rng, prep, nouns)
        _dep(pp_head, pred, "obl")
        nodes += pp
    return nodes, pred


def _xcomp_clause(rng):
    forms, subj_classes, _ = rng.choice(_XCOMP_VERBS)
    subj, subj_head, number, cls = _subject(rng, subj_classes)
    verb = _N("", "VERB")
    _dep(subj_head, verb, "nsubj")
    pre, verb.form, _ = _verb_group(rng, forms, number, verb)
    to = _N("to", "PART")
    if rng.random() < 0.2:
        # "wants to be happy": to and be both depend on the adjective, which is the xcomp
        comp = _N(rng.choice(_PRED_ADJ[cls]), "ADJ")
        tail = [_dep(to, comp, "mark"), _dep(_N("be", "AUX"), comp, "cop"), comp]
    else:
        forms2, _, obj2 = rng.choice([v for v in _TRANSITIVE + _INTRANSITIVE if cls in v[1]])
        comp = _N(forms2[0], "VERB")
        tail = [_dep(to, comp, "mark"), comp] + _vp_tail(rng, comp, obj2, obj_list=False)
    _dep(comp, verb, "xcomp")
    return subj + pre + [verb] + tail, verb


def _ccomp_clause(rng):
    forms, subj_classes, _ = rng.choice(_CCOMP_VERBS)
    subj, subj_head, number, _ = _subject(rng, subj_classes)
    verb = _N("", "VERB")
    _dep(subj_head, verb, "nsubj")
    pre, verb.form, _ = _verb_group(rng, forms, number, verb)
    emb, emb_head = _clause(rng, depth=1)
    _dep(emb_head, verb, "ccomp")
    if rng.random() < 0.7:
        emb = [_dep(_N("that", "SCONJ"), emb_head, "mark")] + emb
    return subj + pre + [verb] + emb, verb


def _clause(rng, depth=0):
    kinds = {"trans": 35, "intrans": 20, "cop": 18, "xcomp": 10, "ccomp": 10 if depth == 0 else 0}
    kind = _choice(rng, kinds)
    if kind == "trans":
        return _verbal_clause(rng, _TRANSITIVE, depth)
    if kind == "intrans":
        return _verbal_clause(rng, _INTRANSITIVE, depth)
    if kind == "cop":
        return _copular_clause(rng)
    if kind == "xcomp":
        return _xcomp_clause(rng)
    return _ccomp_clause(rng)


def _sentence_nodes(rng) -> list[_N]:
    shape = _choice(rng, {"simple": 50, "advcl_front": 14, "advcl_back": 12, "coord": 14})
    if shape == "simple":
        nodes, root = _clause(rng)
    elif shape in ("advcl_front", "advcl_back"):
        sub, sub_head = _clause(rng, depth=1)
        m = rng.choice(_MARKS)
        sub = [_dep(_N(m, "ADV"), sub_head, "advmod") if m == "when" else _dep(_N(m, "SCONJ"), sub_head, "mark")] + sub
        main, root = _clause(rng)
        _dep(sub_head, root, "advcl")
        if shape == "advcl_front":
            # EWT attaches the comma after a fronted adverbial clause to that clause's head
            nodes = sub + [_dep(_N(",", "PUNCT"), sub_head, "punct")] + main
        else:
            nodes = main + sub
    else:
        first, root = _clause(rng, depth=1)
        second, second_head = _clause(rng, depth=1)
        _dep(second_head, root, "conj")
        joint = [_dep(_N(rng.choice(["and", "but"]), "CCONJ"), second_head, "cc")]
        if rng.random() < 0.6:
            joint.insert(0, _dep(_N(",", "PUNCT"), second_head, "punct"))
        nodes = first + joint + second
    root.rel = "root"
    nodes.append(_dep(_N(".", "PUNCT"), root, "punct"))
    return nodes


def _to_sentence(nodes: list[_N], sent_id: str) -> Sentence:
    index = {id(n): i + 1 for i, n in enumerate(nodes)}
    heads = [index[id(n.head)] if n.head is not None else 0 for n in nodes]
    words = [n.form for n in nodes]
    words[0] = words[0][0].upper() + words[0][1:]
    # SpaceAfter=No before punctuation, so that ``text`` can be rebuilt from the words
    misc = [{"SpaceAfter": "No"} if i + 1 < len(nodes) and nodes[i + 1].upos == "PUNCT" else None
            for i in range(len(nodes))]
    text = "".join(w + ("" if m else " ") for w, m in zip(words, misc)).strip()
    return Sentence(words=words, heads=heads, deprels=[n.rel for n in nodes], upos=[n.upos for n in nodes],
                    sent_id=sent_id, text=text, doc_id=None, misc=misc)


def generate_treebank(n: int, seed: int = 0) -> list[Sentence]:
    """``n`` generated sentences (4-30 words) with gold UD trees; the same seed gives the same list.

    Sentence ids are ``gen-<seed>-<i>``; ``doc_id`` is None (each sentence stands alone).
    """
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        nodes = _sentence_nodes(rng)
        if 4 <= len(nodes) <= 30:
            out.append(_to_sentence(nodes, f"gen-{seed}-{len(out)}"))
    return out
