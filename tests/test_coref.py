import os

import numpy as np
import pandas as pd
import pytest
import torch

from bertology import align, coref
from bertology import extract as ex
from bertology.data import read_conllu

# Two GUM-style sentences (columns separated by single spaces here, tabs in the file).
# Document word indices: S1 = 0..5, S2 = 6..20.
#   S1: Mary(0) saw the old dog(4) .
#   S2: She(6) gave her(8) dog(9) a bone(11) in the park(14) and it(16) made Mary(18) happy .
# Entities: 1 = Mary/She/her/Mary, 2 = the old dog/her dog, 3 = a bone/it, 4 = the park (singleton).
# "her dog" has minspan 1,2 (her, dog): dog is nearer the root, so it is the head.
TOY = """# newdoc id = toy
# global.Entity = GRP-etype-infstat-salience-centering-minspan-link-identity
# sent_id = toy-1
1 Mary Mary PROPN NNP _ 2 nsubj _ Entity=(1-person-new-sssss-cf1-1-coref)
2 saw see VERB VBD _ 0 root _ _
3 the the DET DT _ 5 det _ Entity=(2-animal-new-nnnnn-cf2-3-coref
4 old old ADJ JJ _ 5 amod _ _
5 dog dog NOUN NN _ 2 obj _ Entity=2)
6 . . PUNCT . _ 2 punct _ _

# sent_id = toy-2
1 She she PRON PRP _ 2 nsubj _ Entity=(1-person-giv:act-sssss-cf1*-1-ana)
2 gave give VERB VBD _ 0 root _ _
3 her her PRON PRP$ _ 4 nmod:poss _ Entity=(2-animal-giv:act-nnnnn-cf2-1,2-coref(1-person-giv:act-sssss-cf1-1-ana)
4 dog dog NOUN NN _ 2 iobj _ Entity=2)
5 a a DET DT _ 6 det _ Entity=(3-object-new-nnnnn-cf3-2-coref
6 bone bone NOUN NN _ 2 obj _ Entity=3)
7 in in ADP IN _ 9 case _ _
8 the the DET DT _ 9 det _ Entity=(4-place-new-nnnnn-cf4-2-sgl
9 park park NOUN NN _ 2 obl _ Entity=4)
10 and and CCONJ CC _ 12 cc _ _
11 it it PRON PRP _ 12 nsubj _ Entity=(3-object-giv:act-nnnnn-cf1-1-ana)
12 made make VERB VBD _ 2 conj _ _
13 Mary Mary PROPN NNP _ 12 obj _ Entity=(1-person-giv:act-sssss-cf2-1-coref)
14 happy happy ADJ JJ _ 12 xcomp _ _
15 . . PUNCT . _ 2 punct _ _
"""

# CorefUD-style brackets without a head field, a discontinuous mention ("the house ... of Kim")
# and a determiner used as a pronoun ("This").
DISCONTINUOUS = """# newdoc id = d2
# sent_id = d2-1
1 This this DET DT _ 4 nsubj _ Entity=(e1-abstract)
2 is be AUX VBZ _ 4 cop _ _
3 the the DET DT _ 4 det _ Entity=(e2[1/2]-place
4 house house NOUN NN _ 0 root _ Entity=e2[1/2])
5 , , PUNCT , _ 7 punct _ _
6 you you PRON PRP _ 7 nsubj _ Entity=(e3-person)
7 know know VERB VBP _ 4 parataxis _ _
8 , , PUNCT , _ 7 punct _ _
9 of of ADP IN _ 10 case _ Entity=(e2[2/2]-place
10 Kim Kim PROPN NNP _ 4 nmod _ Entity=(e4-person)e2[2/2])
11 . . PUNCT . _ 4 punct _ _
"""


def _parse(text):
    lines = [ln if ln.startswith("#") else ln.replace(" ", "\t") for ln in text.split("\n")]
    return read_conllu("\n".join(lines))


@pytest.fixture
def toy():
    return coref.read_mentions(_parse(TOY))


def test_read_mentions_spans_heads_types(toy):
    (doc,) = toy
    got = [(m.entity, m.start, m.end, m.head, m.mention_type, m.entity_size) for m in doc.mentions]
    assert got == [
        ("1", 0, 0, 0, "proper", 4),      # Mary
        ("2", 2, 4, 4, "nominal", 2),     # the old dog (minspan 3 -> dog)
        ("1", 6, 6, 6, "pronoun", 4),     # She
        ("2", 8, 9, 9, "nominal", 2),     # her dog: outer mention first
        ("1", 8, 8, 8, "pronoun", 4),     # her (nested, on the same word as the opening of "her dog")
        ("3", 10, 11, 11, "nominal", 2),  # a bone
        ("4", 13, 14, 14, "nominal", 1),  # the park (singleton)
        ("3", 16, 16, 16, "pronoun", 2),  # it
        ("1", 18, 18, 18, "proper", 4),   # Mary
    ]
    assert [m.sentence for m in doc.mentions] == [0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert doc.mentions[1].link == "coref" and doc.mentions[6].link == "sgl" and doc.mentions[0].etype == "person"


def test_discontinuous_mentions_and_syntactic_heads():
    (doc,) = coref.read_mentions(_parse(DISCONTINUOUS), fields=("eid", "etype"))
    got = [(m.entity, m.words, m.head, m.mention_type) for m in doc.mentions]
    assert got == [
        ("e1", (0,), 0, "pronoun"),               # DET as nsubj: a pronoun
        ("e2", (2, 3, 8, 9), 3, "nominal"),       # both parts; no head field -> tree head "house"
        ("e3", (5,), 5, "pronoun"),
        ("e4", (9,), 9, "proper"),
    ]


def test_windows_keep_whole_sentences_within_max_length(toy, tokenizer):
    # every word is one piece: S1 = 6 + 2 special = 8 pieces, S1 + S2 = 6 + 15 + 2 = 23
    one = coref.make_windows(toy, tokenizer, 23)
    assert [w.sentences for w in one] == [[0, 1]] and one[0].n_pieces == 23
    assert one.n_coreferent == one.n_evaluated == 5
    two = coref.make_windows(toy, tokenizer, 22)
    assert [w.sentences for w in two] == [[0], [1]] and [w.n_pieces for w in two] == [8, 17]
    assert two[1].offset == 6 and two[1].words[0] == "She"
    assert [(m.start, m.head) for m in two[1].mentions][:3] == [(0, 0), (2, 3), (2, 2)]  # re-indexed
    # "She" and "her dog" lose their antecedents (in S1) to the window boundary
    assert (two.n_coreferent, two.n_evaluated, two.n_mentions_dropped) == (5, 3, 0)
    short = coref.make_windows(toy, tokenizer, 16)  # S2 (17 pieces) cannot fit at all
    assert [w.sentences for w in short] == [[0]]
    assert short.summary() == dict(n_windows=1, n_documents=1, n_sentences=2, n_sentences_dropped=1,
                                   n_mentions=9, n_mentions_dropped=7, n_coreferent=5, n_evaluated=0)
    for w in one + two:  # the piece count is what the model will see
        assert align.encode_words(tokenizer, w.words).n_tokens == w.n_pieces


def _acc(df, name, by):
    return df.set_index([name, "mention_type"]).loc[by, ["correct", "n"]].tolist()


def test_baselines_by_hand(toy, tokenizer):
    # scored: She(ante Mary), her dog(ante dog), her(ante Mary/She), it(ante bone), Mary(ante Mary/She/her)
    # nearest: She->dog x, her dog->She x, her->She v, it->bone v, Mary->it x
    # head match: She->(none) dog x, her dog->dog v, her->(none) She v, it->(none) bone v, Mary->Mary v
    wins = coref.make_windows(toy, tokenizer, 23)
    b = coref.coref_baselines(wins)
    assert _acc(b, "baseline", ("nearest mention", "all")) == [2, 5]
    assert _acc(b, "baseline", ("nearest mention", "pronoun")) == [2, 3]
    assert _acc(b, "baseline", ("nearest mention", "proper")) == [0, 1]
    assert _acc(b, "baseline", ("nearest mention", "nominal")) == [0, 1]
    assert _acc(b, "baseline", ("head-word match", "all")) == [4, 5]
    assert _acc(b, "baseline", ("head-word match", "pronoun")) == [2, 3]
    assert _acc(b, "baseline", ("head-word match", "proper")) == [1, 1]
    assert _acc(b, "baseline", ("head-word match", "nominal")) == [1, 1]
    # with the singleton "the park" as a candidate, "it" picks "park" instead of "bone"
    bs = coref.coref_baselines(wins, include_singletons=True)
    assert _acc(bs, "baseline", ("nearest mention", "all")) == [1, 5]
    assert _acc(bs, "baseline", ("head-word match", "pronoun")) == [1, 3]


def _planted(tokenizer, windows, targets):
    """Heads (every layer): 0 -> the given antecedent word (else [CLS]); 1 -> previous token;
    2 -> uniform over the real tokens; 3 -> [CLS]. Token positions come from each window's encoding."""
    from bertology.models import plant_attention, random_bert

    table = {}
    for w, tgt in zip(windows, targets):
        enc = align.encode_words(tokenizer, w.words)
        T = enc.n_tokens
        word_of = enc.unit_word[enc.unit_of_token]  # word of each piece, -1 for [CLS]/[SEP]
        a = torch.zeros(4, T, T)
        a[0, :, 0] = 1.0
        for q, j in tgt.items():
            rows = torch.as_tensor(word_of == q)
            a[0, rows] = 0.0
            a[0, rows, int(np.flatnonzero(word_of == j)[0])] = 1.0
        a[1, torch.arange(1, T), torch.arange(T - 1)] = 1.0
        a[1, 0, 0] = 1.0
        a[2] = 1.0 / T
        a[3, :, 0] = 1.0
        table[tuple(enc.input_ids.tolist())] = a

    def pattern(layer, ids, mask):
        B, T = ids.shape
        out = torch.zeros(B, 4, T, T)
        out[..., 0] = 1.0  # padding rows
        for b in range(B):
            n = int(mask[b].sum())
            out[b, :, :n, :n] = table[tuple(ids[b, :n].tolist())]
        return out

    return plant_attention(random_bert(tokenizer, n_layers=2, n_heads=4, mlm=False, seed=0), pattern)


def test_planted_heads_by_hand(toy, tokenizer):
    wins = coref.make_windows(toy, tokenizer, 23)
    # head 0: She->Mary, dog(of "her dog")->dog, her->She, it->bone, Mary->her
    model = _planted(tokenizer, wins, [{6: 0, 9: 4, 8: 6, 16: 11, 18: 8}])
    both = coref.coref_heads(model, wins, progress=False)
    assert len(both) == 2 * 4 * len(coref.GROUPS) * 2  # layers x heads x groups x candidate sets
    # one-hot heads: the paper's candidates (any word) and ours (preceding, outside) agree here
    key = ["layer", "head", "mention_type"]
    assert (both[both.candidates == "clark"].set_index(key)["correct"]
            == both[both.candidates == "preceding"].set_index(key)["correct"]).all()
    df = both[both.candidates == "preceding"]
    for layer in (0, 1):
        h = df[df.layer == layer].set_index(["head", "mention_type"])
        assert h.loc[(0, "all"), ["correct", "n"]].tolist() == [5, 5]
        assert h.loc[(0, "pronoun"), "accuracy"] == 1.0 and h.loc[(0, "nominal"), "accuracy"] == 1.0
        # previous token: "." / "gave" / "and" / "made" are never antecedents; for "her dog" the
        # previous word "her" is inside the mention, so no candidate gets attention: wrong
        assert h.loc[(1, "all"), "correct"] == 0
        # uniform: every candidate ties, the earliest (Mary, word 0) wins: right for She, her, Mary
        assert h.loc[(2, "all"), "correct"] == 3
        assert h.loc[(2, "pronoun"), ["correct", "n"]].tolist() == [2, 3]
        assert h.loc[(2, "proper"), "correct"] == 1 and h.loc[(2, "nominal"), "correct"] == 0
        assert h.loc[(3, "all"), "correct"] == 0  # all attention on [CLS]: nothing selected
    best = coref.best_coref_heads(df, top=2)
    assert best[["layer", "head", "label"]].values.tolist() == [[0, 0, "1-1"], [1, 0, "2-1"]]
    table = coref.coref_table(both, coref.coref_baselines(wins))
    assert table.loc["head 1-1", "all"] == 100.0 and table.loc["head 1-1 (preceding)", "all"] == 100.0 and table.loc["nearest mention", "all"] == 40.0
    assert table.loc["head-word match", "n"] == 5


def test_planted_heads_two_windows(toy, tokenizer):
    wins = coref.make_windows(toy, tokenizer, 22)
    # window 2 indices = document - 6: her(2)->She(0), it(10)->bone(5), Mary(12)->her(2)
    model = _planted(tokenizer, wins, [{}, {2: 0, 10: 5, 12: 2}])
    h = coref.coref_heads(model, wins, candidates="preceding", progress=False).query("layer == 0")
    h = h.set_index(["head", "mention_type"])
    assert h.loc[(0, "all"), ["correct", "n"]].tolist() == [3, 3]
    # uniform: the earliest candidate is now "She": right for her and Mary, wrong for it
    assert h.loc[(2, "all"), "correct"] == 2 and h.loc[(2, "pronoun"), ["correct", "n"]].tolist() == [1, 2]


def test_reducer_rejects_wrong_shape(toy, tokenizer):
    wins = coref.make_windows(toy, tokenizer, 23)
    red = coref.CorefHeads(wins, 3, 4)
    enc = align.encode_words(tokenizer, wins[0].words)
    item = ex.Item(0, enc, np.full((2, 4, enc.n_units, enc.n_units), 1.0 / enc.n_units), None)
    with pytest.raises(ValueError, match="layers x heads"):
        red.update(item)


def test_gum_dev_mentions_smoke(tokenizer):
    if not os.environ.get("BERTOLOGY_DATA"):
        pytest.skip("BERTOLOGY_DATA not set")
    from bertology.data import DataUnavailableError, load_treebank

    try:
        tb = load_treebank("gum", "dev")
    except DataUnavailableError:
        pytest.skip("GUM dev not in the mirror")
    docs = coref.read_mentions(tb)
    mentions = [m for d in docs for m in d.mentions]
    assert len(docs) > 10 and len(mentions) > 1000
    kinds = {m.mention_type for m in mentions}
    assert kinds == {"pronoun", "proper", "nominal"}
    assert all(m.start <= m.head <= m.end for m in mentions)
    wins = coref.make_windows(docs[:3], tokenizer, 128)
    assert wins.n_sentences_dropped == 0 and 0 < wins.n_evaluated <= wins.n_coreferent
    assert all(align.encode_words(tokenizer, w.words).n_tokens == w.n_pieces <= 128 for w in wins)


def test_candidates_clark_any_word_vs_preceding_by_hand(toy, tokenizer):
    from types import SimpleNamespace

    wins = coref.make_windows(toy, tokenizer, 23)
    n = len(wins[0].words)  # 21 words; units: [CLS] words [SEP]
    w = np.zeros((n, n))
    w[6, 18], w[6, 0] = 0.6, 0.3  # She -> the later "Mary" (not an antecedent) over the first Mary
    w[9, 8], w[9, 4] = 0.6, 0.3  # dog (of "her dog") -> "her", inside its own mention, over "dog"
    w[8, 6] = 1.0  # her -> She
    w[16, 11] = 1.0  # it -> bone
    w[18, 18], w[18, 8] = 0.7, 0.3  # Mary -> itself (never a candidate), then her
    a = np.zeros((1, 1, n + 2, n + 2))
    a[0, 0, 1:-1, 1:-1] = w
    item = SimpleNamespace(index=0, attention=a, encoding=SimpleNamespace(word_units=np.arange(1, n + 1)))
    got = {}
    for mode in coref.CANDIDATES:
        red = coref.CorefHeads(wins, 1, 1, candidates=mode)
        red.update(item)
        got[mode] = red.result().set_index("mention_type").loc[["all", "pronoun", "nominal"], "correct"].tolist()
    # the paper's definition: She and "her dog" pick their argmax (wrong); her, it, Mary right: 3 of 5
    assert got["clark"] == [3, 2, 0]
    # ours: the later Mary and the word inside the mention are not candidates: all 5 right
    assert got["preceding"] == [5, 3, 1]
    with pytest.raises(ValueError, match="candidates"):
        coref.CorefHeads(wins, 1, 1, candidates="after")


def test_appos_pred_group(tokenizer):
    doc = read_conllu(TOY.replace("1-person-giv:act-sssss-cf2-1-coref)", "1-person-giv:act-sssss-cf2-1-appos)")
                      .replace(" ", "\t"))
    wins = coref.make_windows(coref.read_mentions(doc), tokenizer, 23)
    b = coref.coref_baselines(wins).set_index(["baseline", "mention_type"])
    # the last "Mary" is now an apposition link: 1 of the 5 scored mentions; head match gets it right
    assert b.loc[("head-word match", coref.APPOS_PRED), ["correct", "n"]].tolist() == [1, 1]
    assert b.loc[("head-word match", coref.NO_APPOS_PRED), ["correct", "n"]].tolist() == [3, 4]


# ----------------------------------------------------------------------------- notebook 02's steps and findings

def test_coref_study_is_its_parts(toy, tokenizer):
    wins = coref.make_windows(toy, tokenizer, 23)
    model = _planted(tokenizer, wins, [{6: 0, 9: 4, 8: 6, 16: 11, 18: 8}])
    tables, values = coref.coref_study(model, toy, 23, top=1, progress=False)
    assert set(tables) == {"heads", "baselines", "table"} and set(values) == {"coref_windows", "coref_seconds"}
    assert values["coref_windows"] == wins.summary() and values["coref_seconds"] >= 0
    assert tables["heads"].equals(coref.coref_heads(model, wins, progress=False))
    assert tables["baselines"].equals(coref.coref_baselines(wins))
    t = tables["table"].set_index("system")
    assert list(t.index) == ["nearest mention", "head-word match", "head 1-1", "head 1-1 (preceding)"]
    assert t.loc["head 1-1", "all"] == 100.0 and t.loc["nearest mention", "all"] == 40.0 and t["n"].tolist() == [5] * 4


TABLE2 = pd.DataFrame({"system": ["nearest mention", "head-word match", "head 5-3", "head 4-1", "head 5-3 (preceding)"],
                       "all": [27.0, 52.5, 61.2, 50.0, 66.6], "pronoun": [1.0] * 5})


def test_coref_findings_by_hand():
    f = coref.findings(TABLE2)
    assert f == {"best_head": "5-3", "best_head_all": 61.2, "preceding_head": "5-3", "preceding_all": 66.6,
                 "nearest_mention_all": 27.0, "head_word_match_all": 52.5}
    assert coref.findings_text(f) == [
        "Coreference: the best head (5-3) picks a correct antecedent for 61% of mentions when it may attend anywhere "
        "(the paper's definition; Clark et al.: 65% for BERT-base on CoNLL-2012), 67% restricted to preceding words "
        "(5-3 (preceding)), against 27% for the nearest mention and 52% for head-word match."]  # 52.5 rounds to even
    assert coref.key_numbers(f) == {"coreference: best head accuracy": pytest.approx(0.612)}
    assert coref.findings(None) is None and coref.findings_text(None) == [] and coref.key_numbers(None) == {}


def test_gum_documents_say_why_there_are_none(monkeypatch):
    from types import SimpleNamespace

    from bertology import data

    english, korean = SimpleNamespace(english=True, language="English"), SimpleNamespace(english=False, language="Korean")
    assert coref.gum_documents("none", english, "EWT") == (None, None)  # asked for none: nothing to note
    assert coref.gum_documents("gum", korean, "UD Korean GSD (dev)") == (
        None, "Coreference skipped: it needs UD English GUM, and this run is on Korean (UD Korean GSD (dev)).")

    def unavailable(name, split, **kw):
        raise data.DataUnavailableError(f"{name} {split}: no mirror\nmore lines")

    monkeypatch.setattr(data, "load_treebank", unavailable)
    assert coref.gum_documents("gum", english, "EWT") == (
        None, "Coreference skipped: UD English GUM is not available here (gum dev: no mirror).")
    monkeypatch.setattr(data, "load_treebank", lambda name, split, **kw: _parse(TOY) + _parse(TOY.replace("toy", "two")))
    docs, note = coref.gum_documents("gum", english, "EWT", limit=1)
    assert note is None and [d.doc_id for d in docs] == ["toy"]
