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
    for rel in ("det", "amod", "nsubj", "xcomp", "punct", "obj", "all"):
        assert df.loc[(rel, 0, 0, "dep->head"), "accuracy"] == 1.0
    assert df.loc[("all", 0, 0, "dep->head"), "count"] == 8  # 10 words - 2 roots


def test_previous_token_head_equals_offset_baseline(result):
    df = result.result().set_index(["relation", "layer", "head", "direction"])
    base = result.baselines().set_index(["relation", "offset"])
    # offsets head - dependent: a: The +2, unaffordable +1, house +1, empty -1, . -2;
    # b: Dogs +1, the +1, cat -2  ->  +1: 4 arcs, -1: 1, -2: 2, +2: 1
    assert base.loc[("xcomp", -1), "accuracy"] == 1.0 and base.loc[("punct", -2), "accuracy"] == 1.0
    assert [base.loc[("all", o), "correct"] for o in (-3, -2, -1, 1, 2, 3)] == [0, 2, 1, 4, 1, 0]
    assert df.loc[("all", 0, 1, "dep->head"), "correct"] == base.loc[("all", -1), "correct"]
    assert df.loc[("xcomp", 0, 1, "dep->head"), "accuracy"] == 1.0
    # the first word of each sentence attends only to [CLS]: no prediction, never a lucky tie
    assert df.loc[("det", 0, 1, "dep->head"), "correct"] == 0


def test_head_to_dependent_direction(result):
    df = result.result().set_index(["relation", "layer", "head", "direction"])
    # head 1 looks at the previous word. house -> unaffordable: amod right, det (house -> The) wrong;
    # cat -> the: det right; stood -> house and chase -> Dogs: both nsubj right
    assert df.loc[("amod", 0, 1, "head->dep"), "correct"] == 1
    assert df.loc[("det", 0, 1, "head->dep"), "correct"] == 1 and df.loc[("det", 0, 1, "head->dep"), "count"] == 2
    assert df.loc[("nsubj", 0, 1, "head->dep"), "accuracy"] == 1.0


def test_best_heads_table(result):
    best = syntax.best_heads(result.result(), result.baselines(), min_count=1).set_index("relation")
    assert best.loc["all", "head"] == "1-1" and best.loc["all", "accuracy"] == 1.0
    assert best.loc["all", "baseline_offset"] == 1 and best.loc["all", "baseline_accuracy"] == 4 / 8
    assert best.loc["obj", "stanford"] == "dobj"
    assert list(best.index)[0] == "all"


def test_syntactic_heads_margin(result):
    best = syntax.best_heads(result.result(), result.baselines(), min_count=1)
    heads = syntax.syntactic_heads(best, margin=0.1)
    # head 1-1 is perfect; it is the best head of every relation, labelled by the most frequent
    # relation that beats its baseline by 0.1: det (2 arcs; amod/nsubj also 2 -> first by count order)
    assert list(heads) == [(0, 0)] and heads[(0, 0)].startswith("syntax: ")
    assert syntax.syntactic_heads(best, margin=1.01) == {}
