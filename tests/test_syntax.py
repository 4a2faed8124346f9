from types import SimpleNamespace

import numpy as np
import pytest

from bertology import syntax
from bertology.data import read_conllu
from bertology.extract import extract
from bertology.models import random_bert

from conftest import plant_word_targets, to_gold_head_and_previous

# Two hand-checked UD trees; "unaffordable" splits into 4 pieces.
DOC = """# sent_id = a
1	The	the	DET	_	_	3	det	_	_
2	unaffordable	unaffordable	ADJ	_	_	3	amod	_	_
3	house	house	NOUN	_	_	4	nsubj	_	_
4	stood	stand	VERB	_	_	0	root	_	_
5	empty	empty	ADJ	_	_	4	xcomp	_	_
6	.	.	PUNCT	_	_	4	punct	_	_

# sent_id = b
1	Dogs	dog	NOUN	_	_	2	nsubj	_	_
2	chase	chase	VERB	_	_	0	root	_	_
3	the	the	DET	_	_	4	det	_	_
4	cat	cat	NOUN	_	_	2	obj	_	_

"""


@pytest.fixture
def sentences():
    return read_conllu(DOC)


@pytest.fixture
def result(tokenizer, sentences):
    base = random_bert(tokenizer, n_layers=1, n_heads=2, mlm=False, seed=0)
    model, encs = plant_word_targets(base, sentences, to_gold_head_and_previous, 2)
    red = syntax.RelationHeads(sentences, 1, 2)
    extract(model, encs, red, progress=False)
    return red


def test_planted_gold_head_is_exact(result):
    df = result.result().set_index(["relation", "layer", "head", "direction"])
    for rel in ("det", "amod", "nsubj", "xcomp", "punct", "obj"):
        assert df.loc[(rel, 0, 0, "dep->head"), "accuracy"] == 1.0
    # Clark's "All" scores every word, the two roots included (ROOT is never predicted): 8 / 10
    assert df.loc[("all", 0, 0, "dep->head"), "n"] == 10
    assert df.loc[("all", 0, 0, "dep->head"), "correct"] == 8
    assert df.loc[("root", 0, 0, "dep->head"), "correct"] == 0


def test_tables_list_relations_in_a_fixed_order(result):
    """Rows come sorted by relation, whatever order the sentences brought them in (same seed, same file)."""
    for table in (result.result(), result.baselines()):
        seen = list(dict.fromkeys(table.relation))
        assert seen == sorted(seen) and "all" in seen


def test_previous_token_head_equals_offset_baseline(result):
    df = result.result().set_index(["relation", "layer", "head", "direction"])
    base = result.baselines().set_index(["relation", "offset"])
    # the reference's offsets -3..2, prediction clip(i + o + 1, 0, n) (0-based i, 0 = ROOT), every word:
    # a (n=6, gold 3 3 4 0 4 4): -3: none; -2: "." -> 4; -1: empty -> 4; 0: none; +1: unaffordable, house; +2: The
    # b (n=4, gold 2 0 4 2): -3: chase -> ROOT; -2: chase -> ROOT, cat -> 2; -1: none; +1: Dogs, the;
    #   +2: the -> clip(5) = 4 (cat), right by the clip at the end
    assert base.loc[("xcomp", -1), "accuracy"] == 1.0 and base.loc[("punct", -2), "accuracy"] == 1.0
    assert [base.loc[("all", o), "correct"] for o in (-3, -2, -1, 0, 1, 2)] == [1, 3, 1, 0, 4, 2]
    assert base.loc[("root", -2), "accuracy"] == 0.5 and base.loc[("all", 1), "n"] == 10
    assert df.loc[("all", 0, 1, "dep->head"), "correct"] == base.loc[("all", -1), "correct"]
    assert df.loc[("xcomp", 0, 1, "dep->head"), "accuracy"] == 1.0
    # the first word of each sentence attends only to [CLS]: an all-zero row, argmax -> word 1 (itself): wrong
    assert df.loc[("det", 0, 1, "dep->head"), "correct"] == 0


def test_head_to_dependent_direction(result):
    df = result.result().set_index(["relation", "layer", "head", "direction"])
    # Clark's transpose mode: each dependent's predicted head is the word attending to it most; head 1
    # looks at the previous word, so that is the next word. unaffordable <- house: amod right;
    # The <- unaffordable (its first piece): det wrong, the <- cat right; house <- stood, Dogs <- chase right
    assert df.loc[("amod", 0, 1, "head->dep"), "correct"] == 1
    assert df.loc[("det", 0, 1, "head->dep"), "correct"] == 1 and df.loc[("det", 0, 1, "head->dep"), "n"] == 2
    assert df.loc[("nsubj", 0, 1, "head->dep"), "accuracy"] == 1.0


def test_best_heads_table(result):
    best = syntax.best_heads(result.result(), result.baselines(), min_count=1).set_index("relation")
    assert best.loc["all", "label"] == "1-1" and best.loc["all", "accuracy"] == 8 / 10
    assert best.loc["all", ["layer", "head", "n"]].tolist() == [0, 0, 10]  # ints, 0-indexed; "all" counts every word
    assert "head_index" not in best and "count" not in best
    assert best.loc["all", "baseline_offset"] == 1 and best.loc["all", "baseline_accuracy"] == 4 / 10
    assert "punct" not in best.index and "root" not in best.index  # left out of the table, as Clark
    assert best.loc["obj", "stanford"] == "dobj"
    assert list(best.index)[0] == "all"


def test_syntactic_heads_margin(result):
    best = syntax.best_heads(result.result(), result.baselines(), min_count=1)
    # head 1-1 is perfect on every relation, but so is some clipped offset on these tiny trees
    # (det: The +2 -> house; the +2 -> clip(5, 0, 4) = cat), so it beats no baseline by any margin
    assert syntax.syntactic_heads(best, margin=0.01) == {}
    heads = syntax.syntactic_heads(best, margin=0.0)  # labelled by the most frequent relation it ties
    assert list(heads) == [(0, 0)] and heads[(0, 0)] in ("syntax: det", "syntax: nsubj")  # 2 arcs each


# ----------------------------------------------------------------------------- hand-made maps


def _item(word_attention, index=0):
    """An extracted item from a word-level map ``(n, n)``: units [CLS] words [SEP], one layer, one head."""
    w = np.asarray(word_attention, dtype=np.float64)
    n = len(w)
    a = np.zeros((1, 1, n + 2, n + 2))
    a[0, 0, 1:-1, 1:-1] = w
    a[0, 0, 1:-1, -1] = 1 - w.sum(1)  # the rest to [SEP], which is never a prediction
    return SimpleNamespace(index=index, attention=a, encoding=SimpleNamespace(word_units=np.arange(1, n + 1)))


THE_BIG_DOG = read_conllu("""1	the	the	DET	_	_	3	det	_	_
2	big	big	ADJ	_	_	3	amod	_	_
3	dog	dog	NOUN	_	_	4	nsubj	_	_
4	barked	bark	VERB	_	_	0	root	_	_

""")
#            the   big   dog   barked    (rows attend to columns)
BIG_DOG_MAP = [[0.0, 0.2, 0.6, 0.1],
               [0.1, 0.0, 0.7, 0.1],
               [0.5, 0.3, 0.0, 0.1],
               [0.1, 0.2, 0.5, 0.0]]


@pytest.mark.parametrize("mode, expected", [
    # Clark (argmax over the rows of each dependent's column): the <- dog right, big <- dog right,
    # dog <- big (0.7 beats barked's 0.5) wrong, barked (root) wrong
    ("clark", {"det": 1, "amod": 1, "nsubj": 0, "root": 0, "all": 2}),
    # ours (the head word's own argmax): dog's is "the" -> det right, amod wrong; barked's is dog -> nsubj right
    ("head_argmax", {"det": 1, "amod": 0, "nsubj": 1, "root": 0, "all": 2}),
])
def test_head_to_dep_clark_transpose_vs_head_argmax(mode, expected):
    red = syntax.RelationHeads(THE_BIG_DOG, 1, 1, head_dep_mode=mode)
    red.update(_item(BIG_DOG_MAP))
    df = red.result().set_index(["relation", "direction"])
    assert {r: df.loc[(r, "head->dep"), "correct"] for r in expected} == expected
    assert df.loc[("all", "head->dep"), "n"] == 4
    # dep->head: the -> dog, big -> dog right; dog -> the wrong; barked -> dog wrong (root): 2 of 4
    assert df.loc[("all", "dep->head"), "correct"] == 2 and df.loc[("nsubj", "dep->head"), "correct"] == 0


def test_head_dep_mode_is_checked_and_declared():
    with pytest.raises(ValueError, match="head_dep_mode"):
        syntax.RelationHeads(THE_BIG_DOG, 1, 1, head_dep_mode="both")
    from bertology import fidelity

    assert not any("head_argmax" in x for x in fidelity.lines("clark.relations", head_dep_mode="clark", n_poss_rule=0))
    assert any("head_argmax" in x for x in fidelity.lines("clark.relations", head_dep_mode="head_argmax", n_poss_rule=0))


def test_offset_predictor_reaches_root_at_the_start():
    go = read_conllu("1	Go	go	VERB	_	_	0	root	_	_\n2	home	home	ADV	_	_	1	advmod	_	_\n\n")
    red = syntax.RelationHeads(go, 1, 1)
    red.update(_item([[0.0, 0.5], [0.5, 0.0]]))
    base = red.baselines().set_index(["relation", "offset"])
    # offset -1: Go -> clip(0) = ROOT (right), home -> Go (right): 2 of 2 words, the root included
    assert base.loc[("all", -1), "correct"] == 2 and base.loc[("all", -1), "n"] == 2


JOHNS_DOG = read_conllu("""1	John	John	PROPN	_	_	3	nmod:poss	_	_
2	's	's	PART	_	_	1	case	_	_
3	dog	dog	NOUN	_	_	4	nsubj	_	_
4	barked	bark	VERB	_	_	0	root	_	_

""")


@pytest.mark.parametrize("john_row, expected", [
    ([0.0, 0.6, 0.3, 0.1], 1),  # John -> 's (wrong alone), 's -> dog: scored by 's, right
    ([0.0, 0.1, 0.3, 0.6], 0),  # John -> barked = the last word: the reference's guard, scored alone, wrong
])
def test_possessive_rule_uses_the_prediction_of_s(john_row, expected):
    m = [john_row,
         [0.1, 0.0, 0.8, 0.1],   # 's -> dog
         [0.1, 0.1, 0.0, 0.8],   # dog -> barked
         [0.1, 0.1, 0.8, 0.0]]
    red = syntax.RelationHeads(JOHNS_DOG, 1, 1)
    red.update(_item(m))
    df = red.result().set_index(["relation", "direction"])
    assert df.loc[("nmod:poss", "dep->head"), "correct"] == expected
    assert red.n_poss_rule == 1
    # offset +1 for John predicts 's (wrong alone); the rule scores 's's +1 = dog: right
    assert red.baselines().set_index(["relation", "offset"]).loc[("nmod:poss", 1), "correct"] == 1


# ----------------------------------------------------------------------------- notebook 02's steps and findings

def _best(rows):
    """A hand-made :func:`syntax.best_heads` table: ``(relation, n, layer, head, direction, accuracy, offset, baseline)``."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["relation", "n", "layer", "head", "direction", "accuracy", "baseline_offset",
                                     "baseline_accuracy"])
    df.insert(4, "label", [f"{l + 1}-{h + 1}" for l, h in zip(df["layer"], df["head"])])
    return df


BEST = _best([("all", 100, 2, 1, "dep->head", 0.5, 1, 0.25),
              ("det", 40, 0, 0, "dep->head", 0.9, 1, 0.5),       # beats its offset by 0.4
              ("nsubj", 30, 1, 3, "head->dep", 0.6, -1, 0.55),   # by 0.05 only
              ("amod", 20, 0, 1, "head->dep", 0.75, 1, 0.625),   # by 0.125
              ("case", 10, 3, 0, "dep->head", 0.7, 1, 0.7)])     # by 0


def test_relation_study_is_the_reducer_in_one_pass(tokenizer, sentences, result):
    base = random_bert(tokenizer, n_layers=1, n_heads=2, mlm=False, seed=0)
    model, _ = plant_word_targets(base, sentences, to_gold_head_and_previous, 2)
    rs = syntax.relation_study(model, sentences, n_examples=1, progress=False)
    assert rs.heads.equals(result.result()) and rs.baselines.equals(result.baselines())
    assert list(rs.examples) == [0] and rs.examples[0].attention.shape[:2] == (1, 2)
    assert rs.stats.n_inputs == 2 and rs.n_poss_rule == 0


def test_grid_relations_take_the_first_two_preferred_with_their_direction():
    assert syntax.grid_relations(BEST) == [("det", "dep->head"), ("nsubj", "head->dep")]  # no obj in the table
    assert syntax.grid_relations(BEST, prefer=("obj", "amod"), k=5) == [("amod", "head->dep")]


def test_example_maps_by_hand():
    best = _best([("all", 4, 0, 0, "dep->head", 0.5, 1, 0.25), ("det", 1, 0, 0, "dep->head", 1.0, 1, 0.0),
                  ("amod", 1, 0, 0, "head->dep", 1.0, 1, 0.0)])
    maps, words = syntax.example_maps(best, {0: _item(BIG_DOG_MAP)}, THE_BIG_DOG)  # 4 words: short, but the only one
    assert words == ["the", "big", "dog", "barked"]
    assert [t for t, _, _ in maps] == ["1-1: det (dep->head)", "1-1: amod (head->dep)"]  # "all" left out
    assert np.array_equal(maps[0][1], np.asarray(BIG_DOG_MAP))
    # det: the (0) -> dog (2), a dependent's row; amod, head->dep: dog's row (2) at big (1)
    assert [cells for _, _, cells in maps] == [[(0, 2)], [(2, 1)]]


def test_findings_text_and_key_numbers_by_hand():
    first, second = syntax.findings_text(BEST, min_count=10)
    assert first == ("Over all relations, the best single head (3-2) finds the syntactic head 50% of the time; "
                     "the best fixed offset (+1) 25%.")
    # det (+0.4) and amod (+0.125) beat their offset by 10 points, nsubj and case do not
    assert second.startswith("2 of 4 relations with ≥ 10 arcs have a head that beats the best offset baseline by 10 points")
    assert second.endswith("the most accurate: det 90% (head 1-1, baseline 50%); amod 75% (head 1-2, baseline 62%); "
                           "case 70% (head 4-1, baseline 70%).")
    assert syntax.key_numbers(BEST) == {"best head accuracy: all": 0.5, "best head accuracy: det": 0.9,
                                        "best head accuracy: nsubj": 0.6, "best head accuracy: case": 0.7}  # no obj
