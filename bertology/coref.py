"""Coreference heads (Clark et al. 2019, §4.3 / Table 2), on UD English GUM instead of CoNLL-2012.

Pipeline::

    docs = read_mentions(load_treebank("gum", "dev"))      # documents with gold mentions
    wins = make_windows(docs, tokenizer, max_length)       # whole sentences per model input
    heads = coref_heads(loaded, wins)                      # or: extract(..., CorefHeads(wins, L, H))
    base = coref_baselines(wins)
    coref_table(heads, base)                               # a Table 2 for this model and data

**Antecedent selection accuracy** (Clark et al. §4.3): for each mention ``m`` that has an
antecedent, is the word that ``m``'s head word attends to most the head word of one of ``m``'s
antecedents? The authors never released their coreference code (``clarkkev/attention-analysis``
README: "will add ... soon"), so the definition is the paper's text: the head word may attend
**anywhere** (``candidates="clark"``, the default). We exclude the head word itself and
[CLS]/[SEP], as the authors' released syntax code does for §4.2 (the paper does not say).
``candidates="preceding"`` is our variant: the arg-max only over words before the head word and
outside the mention, which can only help a head (it removes wrong choices).

- an *antecedent* of ``m`` is another mention of the same entity that starts before ``m`` and
  whose head word lies before ``m``'s head word, outside ``m``; only antecedents inside the same
  window count;
- ties go to the earliest word (``argmax``), and a row that puts exactly zero attention on every
  candidate selects nothing and counts as wrong;
- accuracy is reported for all mentions, Clark's three mention types, and GUM's apposition and
  predicative links (``link`` ``appos``/``pred``, which CoNLL-2012 does not annotate as
  coreference) apart: ``appos+pred``, and ``no appos+pred`` (the CoNLL-like subset).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd

from . import align
from .labels import head_label
from .data.conllu_io import Sentence
from .fidelity import declare, option_differs

STUDIES = ("clark.coref",)

PRONOUN, PROPER, NOMINAL = "pronoun", "proper", "nominal"
#: Row order of every table: all mentions, then Clark's three mention types.
MENTION_TYPES = ("all", PRONOUN, PROPER, NOMINAL)
#: GUM link types that CoNLL-2012 does not annotate as coreference.
NON_CONLL_LINKS = ("appos", "pred")
APPOS_PRED, NO_APPOS_PRED = "appos+pred", "no appos+pred"
#: Every group a table reports: the mention types, then the appos/pred split.
GROUPS = MENTION_TYPES + (APPOS_PRED, NO_APPOS_PRED)
#: Which words the mention's head word may select: the paper's (any word but itself) or ours.
CANDIDATES = ("clark", "preceding")

declare("clark.coref", "gum",
        "UD English GUM instead of CoNLL-2012. GUM also links appositions and predicatives (link appos/pred), "
        "which CoNLL-2012 does not annotate; they are scored in 'all' and reported apart (column 'no appos+pred' "
        "is the CoNLL-like subset).",
        kind="data", reference="paper §4.3 (CoNLL-2012); GUM MISC Entity link field")
declare("clark.coref", "windows",
        "Documents are cut into windows of whole sentences of at most {coref_max_length} word pieces, each scored; "
        "the paper truncated each document to its first 128 tokens.",
        reference="paper §4.3")
declare("clark.coref", "self_excluded",
        "The mention's head word itself and [CLS]/[SEP] cannot be selected (the paper does not say; the authors' "
        "released syntax code excludes them in §4.2).",
        reference="clarkkev/attention-analysis Syntax_Analysis.ipynb attn_head_predictor; coreference code unreleased")
declare("clark.coref", "candidates",
        "Coreference heads (our variant, candidates={candidates}): the head word's arg-max is restricted to words "
        "before it and outside its mention; the paper lets it attend anywhere (both are reported).",
        kind="option", when=option_differs("candidates", "clark"), reference="paper §4.3")
declare("clark.coref", "baselines",
        "Baselines: nearest preceding mention and nearest preceding mention with the same head word, falling back "
        "to the nearest mention when none shares it (the paper does not say what happens then); GUM singletons are "
        "not candidates; the rule-based and neural systems are not run.",
        reference="paper §4.3, Table 2; code unreleased")

#: Field order inside one GUM ``Entity`` bracket (the file header says
#: ``# global.Entity = GRP-etype-infstat-salience-centering-minspan-link-identity``).
GUM_ENTITY_FIELDS = ("GRP", "etype", "infstat", "salience", "centering", "minspan", "link", "identity")

#: Clark et al. (2019), Table 2 (p. 7): accuracy (%) at selecting a correct antecedent for a
#: coreferent mention, BERT-base on **CoNLL-2012** with documents truncated to 128 tokens.
#: Columns: all, pronoun, proper, nominal. The neural system (Wiseman et al. 2015) is marked in the
#: paper as only roughly comparable (whole documents, its own mention detection). Transcribed from
#: two independent summaries of the paper found with the search tool (they agree with each other);
#: not checked against the PDF itself, which no search here returned, and the authors released no
#: coreference code or outputs to check them against. A reference point for another model and
#: corpus, not a target.
CLARK_TABLE2_PROVENANCE = ("paper Table 2 as transcribed by secondary summaries (not re-read from the paper; "
                           "no authors' output exists)")
CLARK_TABLE2 = {
    "nearest mention": (27, 29, 29, 19),
    "head-word match": (52, 47, 67, 40),
    "rule-based (Lee et al. 2011 sieves)": (69, 70, 77, 60),
    "neural coref (Wiseman et al. 2015)*": (83, None, None, None),
    "BERT-base head 5-4": (65, 64, 73, 58),
}


def clark_table2() -> pd.DataFrame:
    """:data:`CLARK_TABLE2` as a frame (rows: systems; columns: all, pronoun, proper, nominal)."""
    return pd.DataFrame.from_dict(CLARK_TABLE2, orient="index", columns=list(MENTION_TYPES), dtype=float)


# ----------------------------------------------------------------------------- mentions


@dataclass(frozen=True)
class Mention:
    """One mention. Word indices are 0-based in the document (in a :class:`Window`: in the window)."""

    entity: str  # entity (coreference group) id, unique within the document
    start: int  # first word
    end: int  # last word (inclusive)
    words: tuple[int, ...]  # all its words; start..end unless the mention is discontinuous
    head: int  # head word (see read_mentions)
    sentence: int  # index, in the document, of the sentence holding its first word
    mention_type: str  # "pronoun" | "proper" | "nominal"
    entity_size: int = 1  # mentions of this entity in the whole document (1 = singleton)
    etype: str | None = None  # GUM entity type (person, place, ...)
    link: str | None = None  # GUM link type (coref, ana, appos, pred, sgl, ...)


@dataclass
class Document:
    doc_id: str | None
    sentences: list[Sentence]
    offsets: list[int]  # document index of each sentence's first word
    mentions: list[Mention] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return [w for s in self.sentences for w in s.words]


# "(id-attrs" or "(id-attrs)" opens (and maybe closes) a mention; "id)" closes one. Several may be
# glued together on one word, e.g. "(7-abstract-...-coref(3-abstract-...-coref)" or "7)6)5)".
_BRACKET = re.compile(r"\(([^()]+)(\))?|([^()]+)\)")
# CorefUD marks the parts of a discontinuous mention as "e5[1/2]", "e5[2/2]".
_PART = re.compile(r"^(.*?)(?:\[(\d+)/(\d+)\])?$")


def read_mentions(sentences: Sequence[Sentence], fields: Sequence[str] = GUM_ENTITY_FIELDS) -> list[Document]:
    """Group sentences into documents (consecutive runs of one ``doc_id``) and read their mentions
    from the ``Entity`` MISC annotation (CorefUD / GUM bracket format; ``fields`` names the
    hyphen-separated parts of an opening bracket, the first being the entity id).

    Choices:

    - **Brackets**: a word may carry several; a closing ``id)`` closes the most recent open
      mention of that entity. Parts of a discontinuous mention (``id[i/n]``) are merged into one
      mention whose ``words`` skip the gap. Brackets left open at the end of a document are ignored.
    - **Head word**: the candidates are the words named by the ``minspan`` (GUM) or ``head``
      (CorefUD) field, 1-based positions within the mention; without that field, all words of the
      mention. The head is the candidate closest to the root of its dependency tree (for a span:
      its syntactic head, the word whose head lies outside the span); ties go to the last one, as
      English noun phrases are head-final. Several minspan words occur for coordinations and names.
    - **Mention type** (Clark's three classes), from the head word: ``pronoun`` if its UPOS is
      PRON, or DET standing on its own (a DET head whose relation is not ``det*``: "this", "both");
      ``proper`` if PROPN; ``nominal`` otherwise (nouns, numbers, and GUM's event/discourse-deixis
      mentions headed by verbs).
    - All mentions are kept, including GUM's singletons, appositions (``link`` ``appos``) and
      predicatives (``pred``), which CoNLL-2012 does not annotate; ``entity_size`` and ``link`` let
      an analysis filter them.
    """
    docs = []
    for doc_id, group in itertools.groupby(sentences, key=lambda s: s.doc_id):
        sents = list(group)
        offsets = list(itertools.accumulate([0] + [s.n for s in sents[:-1]]))
        doc = Document(doc_id, sents, offsets)
        doc.mentions = _doc_mentions(doc, tuple(fields))
        docs.append(doc)
    return docs


def _doc_mentions(doc: Document, fields: tuple[str, ...]) -> list[Mention]:
    upos = [u for s in doc.sentences for u in s.upos]
    deprel = [d for s in doc.sentences for d in s.deprels]
    depth = [d for s in doc.sentences for d in _depths(s.heads)]
    sent_of = [i for i, s in enumerate(doc.sentences) for _ in range(s.n)]
    stacks: dict[str, list[dict]] = {}  # entity id -> open brackets, innermost last
    pending: dict[tuple[str, str], dict] = {}  # discontinuous mention awaiting its later parts
    spans = []  # (entity, words, attributes) in order of completion
    for off, s in zip(doc.offsets, doc.sentences):
        for i, misc in enumerate(s.misc):
            value = (misc or {}).get("Entity")
            for m in _BRACKET.finditer(value or ""):
                opener, closed, closer = m.groups()
                if opener is not None:
                    parts = opener.split("-", len(fields) - 1)
                    eid, part, n_parts = _PART.match(parts[0]).groups()
                    b = {"eid": eid, "start": off + i, "part": part, "n": n_parts,
                         "attrs": dict(zip(fields[1:], parts[1:]))}
                    stacks.setdefault(eid, []).append(b)
                else:
                    eid = _PART.match(closer).group(1)
                if opener is None or closed:
                    if not stacks.get(eid):
                        continue  # a closer without an opener: malformed, skip it
                    b = stacks[eid].pop()
                    words = list(range(b["start"], off + i + 1))
                    if b["n"] is not None:  # a part of a discontinuous mention
                        key = (eid, b["n"])
                        first = pending.setdefault(key, {"words": [], "attrs": b["attrs"]})
                        first["words"] += words
                        if b["part"] != b["n"]:
                            continue
                        words, b["attrs"] = sorted(set(pending.pop(key)["words"])), first["attrs"]
                    spans.append((eid, words, b["attrs"]))
    sizes: dict[str, int] = {}
    for eid, _, _ in spans:
        sizes[eid] = sizes.get(eid, 0) + 1
    mentions = []
    for eid, words, attrs in spans:
        cands = words
        spec = attrs.get("minspan") or attrs.get("head")
        if spec:
            idx = [int(x) - 1 for x in spec.split(",") if x.isdigit()]
            cands = [words[k] for k in idx if 0 <= k < len(words)] or words
        head = min(reversed(cands), key=lambda w: depth[w])  # shallowest; ties -> last
        mentions.append(Mention(
            entity=eid, start=words[0], end=words[-1], words=tuple(words), head=head,
            sentence=sent_of[words[0]], mention_type=_mention_type(upos[head], deprel[head]),
            entity_size=sizes[eid], etype=attrs.get("etype"), link=attrs.get("link"),
        ))
    mentions.sort(key=lambda m: (m.start, -m.end))  # document order, outer mention first
    return mentions


def _depths(heads: list[int]) -> list[int]:
    """Distance of each word from the root (heads are 1-based, 0 = root)."""
    out = []
    for i in range(1, len(heads) + 1):
        d, w = 0, i
        while heads[w - 1] != 0 and d <= len(heads):  # the bound guards against cycles
            w, d = heads[w - 1], d + 1
        out.append(d)
    return out


def _mention_type(upos: str, deprel: str) -> str:
    if upos == "PRON" or (upos == "DET" and not deprel.startswith("det")):
        return PRONOUN
    return PROPER if upos == "PROPN" else NOMINAL


# ----------------------------------------------------------------------------- windows


@dataclass
class Window:
    """One model input ``[CLS] words [SEP]``: consecutive whole sentences of one document.
    ``mentions`` are the document's mentions lying wholly inside, re-indexed to the window."""

    doc_id: str | None
    sentences: list[int]  # indices of the document's sentences
    offset: int  # document index of the window's first word
    words: list[str]
    mentions: list[Mention]
    n_pieces: int  # word pieces including the special tokens


class Windows(list):
    """A list of :class:`Window` plus what windowing lost.

    ``n_sentences_dropped`` / ``n_mentions_dropped``: sentences too long for the model on their
    own (and mentions inside them or crossing a window boundary). ``n_coreferent``: mentions with
    an antecedent in their whole document; ``n_evaluated``: mentions with an antecedent in their
    window (the ones scored); the difference lost its antecedents to a window boundary or a drop.
    """

    def __init__(self, windows=(), **stats):
        super().__init__(windows)
        self.n_documents = stats.get("n_documents", 0)
        self.n_sentences = stats.get("n_sentences", 0)
        self.n_sentences_dropped = stats.get("n_sentences_dropped", 0)
        self.n_mentions = stats.get("n_mentions", 0)
        self.n_mentions_dropped = stats.get("n_mentions_dropped", 0)
        self.n_coreferent = stats.get("n_coreferent", 0)
        self.n_evaluated = stats.get("n_evaluated", 0)

    def summary(self) -> dict:
        keys = ("n_documents", "n_sentences", "n_sentences_dropped", "n_mentions", "n_mentions_dropped",
                "n_coreferent", "n_evaluated")
        return {"n_windows": len(self), **{k: getattr(self, k) for k in keys}}

    def inputs(self) -> list[list[str]]:
        """The inputs for :func:`bertology.extract.extract`, in window order."""
        return [w.words for w in self]


def make_windows(documents: Sequence[Document], tokenizer, max_length: int) -> Windows:
    """Cut each document greedily into windows of consecutive whole sentences whose word pieces,
    with [CLS] and [SEP], fit into ``max_length``. Windows do not overlap, so a mention whose
    antecedents fall into an earlier window is not scored (Clark et al. instead truncated each
    document to its first 128 pieces; ``max_length=128`` with the first window per document would
    mimic that). A sentence longer than ``max_length`` on its own is dropped and counted.
    """
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    budget = max_length - n_special
    out, stats = [], dict(n_documents=len(documents), n_sentences=0, n_sentences_dropped=0,
                          n_mentions=0, n_mentions_dropped=0, n_coreferent=0, n_evaluated=0)
    for doc in documents:
        sizes = [_n_pieces(tokenizer, s.words) for s in doc.sentences]
        groups, cur, used = [], [], 0
        for i, n in enumerate(sizes):
            if cur and (used + n > budget or n > budget):
                groups.append(cur)
                cur, used = [], 0
            if n > budget:
                stats["n_sentences_dropped"] += 1
                continue
            cur.append(i)
            used += n
        if cur:
            groups.append(cur)
        kept = 0
        for g in groups:
            lo = doc.offsets[g[0]]
            hi = doc.offsets[g[-1]] + doc.sentences[g[-1]].n
            ms = [_shift(m, -lo) for m in doc.mentions if lo <= m.start and m.end < hi]
            kept += len(ms)
            words = [w for i in g for w in doc.sentences[i].words]
            out.append(Window(doc.doc_id, g, lo, words, ms, sum(sizes[i] for i in g) + n_special))
            stats["n_evaluated"] += len(_links(ms))
        stats["n_sentences"] += len(doc.sentences)
        stats["n_mentions"] += len(doc.mentions)
        stats["n_mentions_dropped"] += len(doc.mentions) - kept
        stats["n_coreferent"] += len(_links(doc.mentions))
    return Windows(out, **stats)


def _n_pieces(tokenizer, words: list[str]) -> int:
    # as align.encode_words sees them: words without any piece become the unknown token
    words = align.fill_empty_words(tokenizer, list(words))
    return len(tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"])


def _shift(m: Mention, by: int) -> Mention:
    return replace(m, start=m.start + by, end=m.end + by, words=tuple(w + by for w in m.words), head=m.head + by)


# ----------------------------------------------------------------------------- scoring


@dataclass
class _Link:
    mention: Mention
    antecedent_heads: frozenset[int]
    preceding: list[Mention]  # mentions before it whose head is a candidate, in document order


def _links(mentions: Sequence[Mention]) -> list[_Link]:
    """The mentions that have an antecedent (see the module docstring), in document order."""
    out = []
    for m in mentions:
        own = set(m.words)
        prev = [a for a in mentions if a.start < m.start and a.head < m.head and a.head not in own]
        ante = frozenset(a.head for a in prev if a.entity == m.entity)
        if ante:
            out.append(_Link(m, ante, prev))
    return out


def _groups(m: Mention) -> list[int]:
    """Indices into :data:`GROUPS` that mention ``m`` counts in."""
    g = [0, MENTION_TYPES.index(m.mention_type)]
    g.append(GROUPS.index(APPOS_PRED if m.link in NON_CONLL_LINKS else NO_APPOS_PRED))
    return g


class CorefHeads:
    """Reducer: antecedent selection accuracy of every head, per group of :data:`GROUPS`.

    ``candidates``: ``"clark"`` (any word of the window but the head word; default) or
    ``"preceding"`` (ours: words before the head word, outside the mention). Give
    :func:`bertology.extract.extract` ``windows.inputs()`` at word level, so that ``item.index``
    is the window's position in ``windows``. Word-level attention follows Clark et al. §4.1 (from
    a split word: mean over its pieces; to it: sum).
    """

    def __init__(self, windows: Sequence[Window], n_layers: int, n_heads: int, candidates: str = "clark"):
        if candidates not in CANDIDATES:
            raise ValueError(f"candidates must be one of {CANDIDATES}, got {candidates!r}")
        self.shape = (n_layers, n_heads)
        self.candidates = candidates
        self.correct = np.zeros((len(GROUPS), n_layers, n_heads), dtype=np.int64)
        self.count = np.zeros(len(GROUPS), dtype=np.int64)
        self.n_skipped = 0  # scored mentions lost to truncation by the model's length limit
        self._prep = [self._prepare(w, candidates) for w in windows]

    @staticmethod
    def _prepare(w: Window, candidates: str):
        links = _links(w.mentions)
        if not links:
            return None
        n = len(w.words)
        q = np.array([lk.mention.head for lk in links])
        if candidates == "preceding":
            cand = np.arange(n)[None, :] < q[:, None]  # words before the head word ...
        else:
            cand = np.arange(n)[None, :] != q[:, None]  # any word but the head word itself
        gold = np.zeros((len(links), n), dtype=bool)
        for r, lk in enumerate(links):
            if candidates == "preceding":
                cand[r, list(lk.mention.words)] = False  # ... outside the mention itself
            gold[r, list(lk.antecedent_heads)] = True
        member = np.zeros((len(GROUPS), len(links)), dtype=bool)
        for r, lk in enumerate(links):
            member[_groups(lk.mention), r] = True
        return q, cand, gold, member

    def update(self, item) -> None:
        prep = self._prep[item.index]
        if prep is None:
            return
        if item.attention.shape[:2] != self.shape:
            raise ValueError(f"attention has {item.attention.shape[:2]} layers x heads, expected {self.shape}")
        q, cand, gold, member = prep
        wu = item.encoding.word_units  # unit of each kept word
        keep = q < len(wu)
        self.n_skipped += int((~keep).sum())
        q, cand, gold, member = q[keep], cand[keep, : len(wu)], gold[keep, : len(wu)], member[:, keep]
        if not len(q):
            return
        rows = item.attention[:, :, wu[q]][..., wu]  # (L, H, M, words)
        scores = np.where(cand, rows, -np.inf)
        pick = scores.argmax(-1)  # (L, H, M); ties -> earliest word
        top = np.take_along_axis(scores, pick[..., None], -1)[..., 0]
        ok = gold[np.arange(len(q)), pick] & (top > 0)
        for k in range(len(GROUPS)):
            self.correct[k] += ok[..., member[k]].sum(-1)
            self.count[k] += int(member[k].sum())

    def result(self) -> pd.DataFrame:
        """Tidy table ``layer, head, mention_type, candidates, correct, n, accuracy`` (0-indexed; ``n``: mentions;
        ``mention_type`` ranges over :data:`GROUPS`)."""
        L, H = self.shape
        rows = [
            (layer, head, t, self.candidates, int(self.correct[k, layer, head]), int(self.count[k]),
             self.correct[k, layer, head] / self.count[k] if self.count[k] else np.nan)
            for layer in range(L) for head in range(H) for k, t in enumerate(GROUPS)
        ]
        return pd.DataFrame(rows, columns=["layer", "head", "mention_type", "candidates", "correct", "n", "accuracy"])


def coref_heads(loaded, windows: Windows, candidates: Sequence[str] = CANDIDATES, batch_size: int = 4,
                max_tokens: int = 2048, progress: bool = True, **extract_kwargs) -> pd.DataFrame:
    """Run :class:`CorefHeads` for each of ``candidates`` over ``windows`` in one
    :func:`bertology.extract.extract` pass; the results stacked (column ``candidates``).

    Windows are long (up to the model's maximum length), so batches are kept small: each holds
    layers x heads x T x T attention probabilities at once.
    """
    from .extract import extract

    if isinstance(candidates, str):
        candidates = (candidates,)
    reds = [CorefHeads(windows, loaded.info.n_layers, loaded.info.n_heads, c) for c in candidates]
    extract(loaded, windows.inputs(), reds, level="word", batch_size=batch_size, max_tokens=max_tokens,
            progress=progress, desc="coref", **extract_kwargs)
    return pd.concat([r.result() for r in reds], ignore_index=True)


def coref_baselines(windows: Sequence[Window], include_singletons: bool = False) -> pd.DataFrame:
    """Accuracy of two string/position baselines on the same mentions as :class:`CorefHeads`.

    Each picks the head word of one preceding mention (a mention starting before ``m`` whose head
    word comes before ``m``'s, outside ``m``); it is correct if that word is the head of an antecedent:

    - ``nearest mention``: the preceding mention whose head word is closest to ``m``;
    - ``head-word match``: the closest preceding mention whose head word equals ``m``'s
      (case-insensitive), else the nearest mention (the paper does not say what it does then).

    CoNLL-2012, where Clark et al. ran them, annotates no singletons, so by default mentions of
    entities mentioned only once in their document are not candidates; ``include_singletons=True``
    lets GUM's singletons compete too. Returns ``baseline, mention_type, correct, n, accuracy``
    with ``mention_type`` over :data:`GROUPS`.
    """
    tally = {(b, t): [0, 0] for b in ("nearest mention", "head-word match") for t in GROUPS}
    for w in windows:
        low = [x.lower() for x in w.words]
        for lk in _links(w.mentions):
            m = lk.mention
            prev = [a for a in lk.preceding if include_singletons or a.entity_size > 1]
            nearest = max(a.head for a in prev)  # an antecedent is always among them
            same = [a.head for a in prev if low[a.head] == low[m.head]]
            picks = {"nearest mention": nearest, "head-word match": max(same) if same else nearest}
            for b, pick in picks.items():
                for k in _groups(m):
                    tally[b, GROUPS[k]][0] += pick in lk.antecedent_heads
                    tally[b, GROUPS[k]][1] += 1
    rows = [(b, t, c, n, c / n if n else np.nan) for (b, t), (c, n) in tally.items()]
    return pd.DataFrame(rows, columns=["baseline", "mention_type", "correct", "n", "accuracy"])


def best_coref_heads(df: pd.DataFrame, by: str = "all", top: int = 1, candidates: str | None = None) -> pd.DataFrame:
    """The ``top`` heads by accuracy on ``by`` (a group of :data:`GROUPS`) under ``candidates``
    (default: ``"clark"`` when ``df`` has it, else the one set it has), one row each with the
    accuracy on every group: ``layer, head, label, all, pronoun, ...``. Ties go to the lower layer,
    then the lower head."""
    if "candidates" in df:
        have = list(dict.fromkeys(df["candidates"]))
        df = df[df["candidates"] == (candidates or ("clark" if "clark" in have else have[0]))]
    cols = [g for g in GROUPS if g in set(df["mention_type"])]
    wide = df.pivot_table(index=["layer", "head"], columns="mention_type", values="accuracy", dropna=False)
    wide = wide.reindex(columns=cols).sort_values(by, ascending=False, kind="stable")
    out = wide.head(top).reset_index()
    out.insert(2, "label", [head_label(layer, head) for layer, head in zip(out["layer"], out["head"])])
    out.columns.name = None
    return out


def coref_table(heads: pd.DataFrame, baselines: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    """A Table 2 for this run: accuracy (%) of the baselines and, for each candidate set in
    ``heads``, the ``top`` heads by "all" (``head L-H``: the paper's definition, any word;
    ``head L-H (preceding)``: ours). Columns: the groups of :data:`GROUPS`, plus ``n`` (mentions scored)."""
    cols = [g for g in GROUPS if g in set(baselines["mention_type"])]
    base = baselines.pivot_table(index="baseline", columns="mention_type", values="accuracy", sort=False)
    parts = [base.reindex(columns=cols)]
    modes = list(dict.fromkeys(heads["candidates"])) if "candidates" in heads else ["clark"]
    for mode in modes:
        best = best_coref_heads(heads, top=top, candidates=mode).set_index("label").reindex(columns=cols)
        best.index = [f"head {label}" + ("" if mode == "clark" else f" ({mode})") for label in best.index]
        parts.append(best)
    out = (pd.concat(parts) * 100).round(1)
    out["n"] = int(baselines.loc[baselines.mention_type == "all", "n"].iloc[0])
    out.columns.name = None
    return out


#: Values of notebook 02's ``coref`` parameter: UD English GUM, or no coreference study.
COREF_DATA = ("gum", "none")


def gum_documents(coref: str, info, treebank: str, split: str = "dev",
                  limit: int | None = None) -> tuple[list[Document] | None, str | None]:
    """The documents of the coreference study, or why there are none: ``(docs, note)``.

    ``coref``: one of :data:`COREF_DATA`; ``info``: the treebank info of the run's relation data
    (``.english``, ``.language``), whose description is ``treebank``. GUM is English, so a run on
    another language skips it, as does a machine without GUM; ``note`` then says so for the report
    (``None`` when the documents were read, or when ``coref="none"`` asked for no study). ``limit``:
    the first documents only."""
    from .data import DataUnavailableError, load_treebank

    if coref == "none":
        return None, None
    if not info.english:
        return None, f"Coreference skipped: it needs UD English GUM, and this run is on {info.language} ({treebank})."
    try:
        gum = load_treebank("gum", split)
    except DataUnavailableError as exc:
        return None, f"Coreference skipped: UD English GUM is not available here ({str(exc).splitlines()[0]})."
    return read_mentions(gum)[:limit], None


def coref_study(loaded, docs: Sequence[Document], max_length: int, top: int = 3,
                **extract_kwargs) -> tuple[dict[str, pd.DataFrame], dict]:
    """Notebook 02's coreference section in one call: windows of whole sentences of at most
    ``max_length`` pieces (:func:`make_windows`), the heads under both candidate sets
    (:func:`coref_heads`), the baselines and a Table 2 with the ``top`` heads (:func:`coref_table`,
    its index as column ``system``).

    Returns ``(tables, values)``: tables ``heads, baselines, table``; values ``coref_windows``
    (:meth:`Windows.summary`) and ``coref_seconds`` (heads and baselines)."""
    import time

    windows = make_windows(docs, loaded.tokenizer, max_length)
    t0 = time.perf_counter()
    heads = coref_heads(loaded, windows, **extract_kwargs)
    base = coref_baselines(windows)
    seconds = round(time.perf_counter() - t0, 2)
    table = coref_table(heads, base, top=top).reset_index(names="system")
    return {"heads": heads, "baselines": base, "table": table}, {"coref_windows": windows.summary(), "coref_seconds": seconds}


def findings(table: pd.DataFrame | None) -> dict | None:
    """The coreference numbers of notebook 02's "what this run shows" (accuracy in %, column ``all``),
    from :func:`coref_study`'s ``table`` (``None``, no study: ``None``): the best head under the paper's candidates (``best_head``,
    its ``layer-head`` label, and ``best_head_all``), the best with preceding words only
    (``preceding_head``, ``preceding_all``) and the two baselines (``nearest_mention_all``,
    ``head_word_match_all``)."""
    if table is None:
        return None
    t = table.set_index("system")["all"]
    heads = [s for s in t.index if s.startswith("head ")]
    best = [s for s in heads if not s.endswith(" (preceding)")][0]
    ours = [s for s in heads if s.endswith(" (preceding)")][0]
    return {"best_head": best[len("head "):], "best_head_all": float(t[best]),
            "preceding_head": ours[len("head "):-len(" (preceding)")], "preceding_all": float(t[ours]),
            "nearest_mention_all": float(t["nearest mention"]), "head_word_match_all": float(t["head-word match"])}


def findings_text(f: dict | None) -> list[str]:
    """The Markdown line of :func:`findings`, with Clark et al.'s BERT-base number for reference
    (none without a study)."""
    if f is None:
        return []
    return [f"Coreference: the best head ({f['best_head']}) picks a correct antecedent for {f['best_head_all']:.0f}% of "
            "mentions when it may attend anywhere (the paper's definition; Clark et al.: 65% for BERT-base on CoNLL-2012), "
            f"{f['preceding_all']:.0f}% restricted to preceding words ({f['preceding_head']} (preceding)), against "
            f"{f['nearest_mention_all']:.0f}% for the nearest mention and {f['head_word_match_all']:.0f}% for head-word match."]


def key_numbers(f: dict | None) -> dict[str, float]:
    """Headline number of notebook 02's coreference section (from :func:`findings`), as a fraction
    (none without a study)."""
    if f is None:
        return {}
    return {"coreference: best head accuracy": f["best_head_all"] / 100}
