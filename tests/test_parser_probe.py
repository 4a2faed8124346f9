import numpy as np
import pandas as pd
import pytest
import torch

from bertology import parser_probe as pp
from bertology.data import load_treebank, read_conllu
from bertology.extract import extract
from bertology.models import plant_attention, random_bert

from conftest import plant_word_targets, to_gold_head_and_previous

# Two hand-checked UD trees (the second sentence of each has no punctuation).
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

# a: The+ unaffordable+ house+ stood+ empty- (3, gold 4); "." wrong but punctuation, not counted
# b: Dogs+ chase+ the- (2, gold 4) cat+               -> 7 of 9 scored words
HAND = [np.array([3, 3, 4, 0, 3, 1]), np.array([2, 0, 2, 2])]


@pytest.fixture
def trees():
    return read_conllu(DOC)


def test_uas_excludes_punctuation(trees):
    assert pp.uas(HAND, trees) == (pytest.approx(7 / 9), 9)
    fixed_punct = [np.array([3, 3, 4, 0, 3, 4]), HAND[1]]  # right "." changes nothing
    assert pp.uas(fixed_punct, trees) == (pytest.approx(7 / 9), 9)


def test_right_branching(trees):
    rb = pp.right_branching(trees)
    assert [p.tolist() for p in rb] == [[2, 3, 4, 5, 6, 0], [2, 3, 4, 0]]
    # a: The-(2≠3) unaffordable+ house+ stood-(5≠0) empty-(6≠4); b: Dogs+ chase-(3≠0) the+ cat-(0≠2)
    assert pp.uas(rb, trees) == (pytest.approx(4 / 9), 9)


def test_tables(trees):
    runs = [pp.ProbeRun("hand", "m", HAND, trees), pp.ProbeRun("right-branching", "-", pp.right_branching(trees), trees)]
    t = pp.uas_table(runs).set_index("probe")
    assert list(pp.uas_table(runs).columns) == ["probe", "model", "uas", "n_words", "recipe"]
    assert t.loc["hand", "uas"] == pytest.approx(7 / 9) and t.loc["right-branching", "n_words"] == 9
    rel = pp.relation_table(runs).set_index(["probe", "relation"])
    assert "punct" not in rel.loc["hand"].index
    assert tuple(rel.loc[("hand", "det"), ["correct", "n"]]) == (1, 2)  # The right, the wrong
    assert rel.loc[("hand", "xcomp"), "accuracy"] == 0.0 and rel.loc[("hand", "nsubj"), "accuracy"] == 1.0
    assert rel.loc[("right-branching", "root"), "correct"] == 0  # both roots get the next word


# [CLS] the cat sat [SEP]: every word is one piece, so word-level = token-level attention.
M = torch.tensor([
    # head 0                                     head 1
    [[.50, .50, .00, .00, .00], [.20, .20, .20, .20, .20]],  # [CLS]
    [[.10, .20, .30, .40, .00], [.00, .00, .00, .00, 1.0]],  # the
    [[.25, .25, .00, .50, .00], [.70, .10, .10, .10, .00]],  # cat
    [[.00, .60, .00, .20, .20], [.00, .00, .80, .00, .20]],  # sat
    [[.00, .00, .00, .00, 1.0], [.00, .00, .00, .00, 1.0]],  # [SEP]
]).permute(1, 0, 2)  # (heads, from, to)


def test_features_read_off_by_hand(tokenizer):
    base = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=False, seed=0)
    model = plant_attention(base, lambda layer, ids, mask: M.expand(ids.shape[0], 2, 5, 5).clone())
    red = pp.PairFeatures()
    extract(model, [["the", "cat", "sat"]], red, progress=False)
    (att,), _ = red.result()
    assert att.dtype == np.float16 and att.shape == (2, 4, 4)  # [CLS] (= ROOT) + 3 words; [SEP] dropped
    f = pp.pair_features(att)  # (dependent 1..3, candidate 0..3, [α_ij head 0, head 1, α_ji head 0, head 1])
    assert f.shape == (3, 4, 4)
    # cat -> ROOT: cat attends to [CLS] .25 (head 0) and .70 (head 1); [CLS] attends to cat 0 and .20
    np.testing.assert_allclose(f[1, 0], [.25, .70, .00, .20], atol=1e-3)
    # the -> sat: the->sat .40 / 0; sat->the .60 / 0
    np.testing.assert_allclose(f[0, 3], [.40, .00, .60, .00], atol=1e-3)
    # sat -> ROOT and sat -> cat
    np.testing.assert_allclose(f[2, 0], [.00, .00, .00, .20], atol=1e-3)
    np.testing.assert_allclose(f[2, 2], [.00, .80, .50, .10], atol=1e-3)
    # and every entry: F[i-1, j] = (M[:, i, j], M[:, j, i]) over units 0..3
    for i in range(1, 4):
        for j in range(4):
            np.testing.assert_allclose(f[i - 1, j], np.r_[M[:, i, j], M[:, j, i]], atol=1e-3)


def test_static_word_vectors(tokenizer):
    from bertology.align import encode_words

    enc = encode_words(tokenizer, ["The", "unaffordable", "house"], None, 64)
    emb = np.stack([np.arange(len(tokenizer), dtype=np.float32), np.ones(len(tokenizer), np.float32)], 1)
    v = pp.static_word_vectors(emb, enc)  # row = (mean piece id, 1)
    assert v.shape == (4, 2) and v[0, 0] == tokenizer.cls_token_id
    pieces = tokenizer(["unaffordable"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert len(pieces) == 4 and v[2, 0] == pytest.approx(np.mean(pieces)) and (v[:, 1] == 1).all()


def _unique(sentences):
    seen, out = set(), []
    for s in sentences:  # the planted table is keyed by the words' pieces: one tree per word string
        if tuple(s.words) not in seen:
            seen.add(tuple(s.words))
            out.append(s)
    return out


def _uniform(sentence, enc):
    T = enc.n_tokens
    return np.full((2, T, T), 1.0 / T)


@pytest.fixture(scope="module")
def planted_data(tokenizer):
    sents = _unique(load_treebank("sample", "train", limit=120))[:80]
    train, test = sents[:40], sents[40:]
    out = {}
    for name, fn in (("gold", to_gold_head_and_previous), ("uniform", _uniform)):
        base = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=False, seed=0)
        model, _ = plant_word_targets(base, sents, fn, 2)
        out[name] = (pp.collect(model, train, progress=False), pp.collect(model, test, progress=False))
    return out, test


def test_probe_learns_planted_gold_head(planted_data):
    data, test = planted_data
    tr, te = data["gold"]
    assert tr.attention[0].shape[0] == 2 and tr.vectors is not None
    # root word attends to [CLS] = ROOT in head 0: its ROOT feature is exactly 1
    root = test[0].heads.index(0) + 1
    assert float(te.attention[0][0, root, 0]) == 1.0
    fitted = {}
    for kind in pp.PROBES:
        fitted[kind] = tp = pp.train_probe(tr, kind, epochs=20, batch_size=4, seed=0, device="cpu")
        assert pp.uas(tp.predict(te), test)[0] == 1.0, kind
        assert pp.uas(tp.predict(te, decode="mst"), test)[0] == 1.0, kind
    again = pp.train_probe(tr, "attn+word", epochs=20, batch_size=4, seed=0, device="cpu")
    assert torch.equal(fitted["attn+word"].probe.W.weight, again.probe.W.weight)  # deterministic for a seed


def test_run_parser_probes_rows(planted_data, tokenizer):
    data, test = planted_data
    base = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=False, seed=0)
    runs = pp.run_parser_probes(base, data["gold"][0].sentences[:8], test[:8], epochs=1, device="cpu",
                                progress=False)
    t = pp.uas_table(runs)
    m, r = "random-bert-1x2", "random-bert-1x2+random-init"
    assert list(zip(t.probe, t.model, t.recipe)) == [
        ("right-branching", "-", "-"), ("attn", m, "ours"), ("attn+word", m, "ours"),
        ("attn", m, "clark"), ("attn+word", m, "clark"),  # the authors' recipe: on the model only
        ("attn", r, "ours"), ("attn+word", r, "ours")]
    assert (t.n_words == t.n_words[0]).all()


def test_probe_on_uniform_attention_stays_low(planted_data):
    data, test = planted_data
    tr, te = data["uniform"]
    tp = pp.train_probe(tr, "attn", epochs=10, batch_size=4, seed=0, device="cpu")
    score, n = pp.uas(tp.predict(te), test)
    assert n > 100 and score < 0.5
    assert score <= pp.uas(pp.right_branching(test), test)[0] + 0.1  # no better than a trivial baseline


def test_clark_reference():
    ref = pp.CLARK_TABLE3.set_index("probe")["uas"]
    assert ref["Attn"] == 0.61 and ref["Attn + GloVe"] == 0.77 and ref["Right-branching"] == 0.26


def test_uas_leaves_out_the_punct_relation_not_the_punct_tag():
    # the authors' run_training skips words whose relation is punct; a PUNCT-tagged word with
    # another relation counts, a punct-relation word with another tag does not
    t = read_conllu("1	Hi	hi	INTJ	_	_	0	root	_	_\n2	:)	:)	PUNCT	_	_	1	discourse	_	_\n"
                    "3	--	--	SYM	_	_	1	punct	_	_\n\n")
    assert pp.uas([np.array([0, 0, 0])], t) == (pytest.approx(1 / 2), 2)


def test_clark_probe_root_from_cls_and_sep_by_hand():
    # units [CLS], w1, w2; rows attend to columns, the rest of each row goes to [SEP]
    A = np.array([[0.2, 0.3, 0.1], [0.4, 0.1, 0.3], [0.1, 0.6, 0.2]])
    to_sep, from_sep = 1 - A.sum(1), np.array([0.3, 0.5, 0.2])  # [.4, .2, .1]
    probe = pp.ClarkProbe(1)
    with torch.no_grad():
        probe.w.copy_(torch.tensor([2.0, 1.0]))  # forward map, transposed map
        probe.root_start.fill_(0.5)
        probe.root_end.fill_(3.0)
    tree = read_conllu("1	a	a	X	_	_	0	root	_	_\n2	b	b	X	_	_	1	dep	_	_\n\n")
    data = pp.ProbeData("m", tree, [A[None].astype(np.float16)], sep=[np.stack([to_sep, from_sep])[None].astype(np.float16)])
    (batch,) = pp._batches(data, "cpu", 1)
    s = pp._scores(probe, batch)[0].detach().numpy()
    # w1: ROOT 2(.5*.4 + 3*.2) + 1(.5*.3 + 3*.5) = 3.25; itself 2*.1 + .1 = .3 (a candidate); w2: 2*.3 + .6 = 1.2
    # w2: ROOT 2(.5*.1 + 3*.1) + 1(.5*.1 + 3*.2) = 1.35; w1: 2*.6 + .3 = 1.5; itself 3*.2 = .6
    np.testing.assert_allclose(s[1], [3.25, 0.3, 1.2], atol=2e-3)
    np.testing.assert_allclose(s[2], [1.35, 1.5, 0.6], atol=2e-3)
    tp = pp.TrainedProbe("attn", "m", probe)
    assert [p.tolist() for p in tp.predict(data)] == [[0, 1]]


def test_clark_recipe_budget(planted_data):
    data, test = planted_data
    tr, te = data["gold"]
    tp = pp.train_probe(tr, "attn", recipe="clark", seed=0, device="cpu")
    assert isinstance(tp.probe, pp.ClarkProbe) and len(tp.losses) == pp.CLARK_RECIPE["epochs"] == 1
    again = pp.train_probe(tr, "attn", recipe="clark", seed=0, device="cpu")
    assert torch.equal(tp.probe.w, again.probe.w)
    # 40 sentences, one Adam step of 2e-3 each from a random start: far from converged, but it has learnt
    assert 0 <= pp.uas(tp.predict(te), test)[0] <= 1 and tp.losses[0] > 0
    tw = pp.train_probe(tr, "attn+word", recipe="clark", seed=0, device="cpu")
    assert tw.probe.dense is not None and len(tw.predict(te)) == len(test)
    with pytest.raises(ValueError, match="recipe"):
        pp.train_probe(tr, "attn", recipe="paper")


# ----------------------------------------------------------------------------- notebook 02's steps and findings

def test_probe_source_and_treebanks():
    assert pp.probe_source("auto", "UD English EWT (dev)") == "ewt"
    assert pp.probe_source("auto", "shipped sample (dev)") == "sample"  # "auto" fell back to the sample
    assert pp.probe_source("ud:ko_gsd", "UD Korean GSD (dev)") == "ud:ko_gsd"
    source, train, test = pp.probe_treebanks("sample", "shipped sample (dev)", 7, 0)
    assert source == "sample" and len(train) == 7 and len(test) == len(load_treebank("sample", "test"))
    assert len(pp.probe_treebanks("sample", "x", 3, 5)[2]) == 5


def test_probe_study_is_run_parser_probes_and_its_tables(planted_data, tokenizer):
    data, test = planted_data
    base = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=False, seed=0)
    kw = dict(epochs=1, device="cpu", progress=False, probes=("attn",), random_init=None, recipes=("ours",))
    tables, seconds = pp.probe_study(base, data["gold"][0].sentences[:8], test[:8], **kw)
    runs = pp.run_parser_probes(base, data["gold"][0].sentences[:8], test[:8], **kw)
    assert tables["uas"].equals(pp.uas_table(runs)) and tables["relations"].equals(pp.relation_table(runs))
    assert seconds >= 0


UAS = pd.DataFrame([("right-branching", "-", 0.25, 9, "-"), ("attn", "m", 0.5, 9, "ours"), ("attn", "m", 0.625, 9, "clark"),
                    ("attn", "m+random-init", 0.125, 9, "ours")], columns=["probe", "model", "uas", "n_words", "recipe"])


def test_probe_findings_text_and_key_numbers_by_hand():
    assert pp.findings_text(UAS) == ["Parser probe UAS: right-branching on -: 25.0%; attn on m: 50.0%; "
                                     "attn on m (authors recipe): 62.5%; attn on m+random-init: 12.5%."]
    assert pp.key_numbers(UAS, "m") == {"parser probe UAS: right-branching": 0.25, "parser probe UAS: attn": 0.5,
                                        "parser probe UAS: attn (authors' recipe)": 0.625,
                                        "parser probe UAS: attn (random init)": 0.125}
