"""Structural probe metrics on hand-made trees, and a probe that must recover a planted tree metric."""
import numpy as np
import torch
import pytest
import pandas as pd

from bertology import structural_probe as sp
from bertology.data import Sentence

# "The cat sat on the mat ." : The->cat, cat->sat, sat=root, on->mat, the->mat, mat->sat, .->sat
CAT = Sentence(words="The cat sat on the mat .".split(), heads=[2, 3, 0, 6, 6, 3, 3],
               deprels=["det", "nsubj", "root", "case", "det", "obl", "punct"],
               upos=["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"], sent_id="cat")


def test_depths_and_distances_by_hand():
    assert sp.tree_depths(CAT.heads).tolist() == [2, 1, 0, 2, 2, 1, 1]
    d = sp.tree_distances(CAT.heads)
    assert d[0, 3] == 4  # The-cat-sat-mat-on
    assert d[1, 5] == 2 and d[3, 4] == 2 and d[6, 2] == 1 and d[0, 6] == 3
    assert (d == d.T).all() and (np.diag(d) == 0).all()
    d[0, 3] = 99  # a caller's copy: the tree cached for the next caller is untouched
    assert sp.tree_distances(CAT.heads)[0, 3] == 4 and sp.tree_depths(tuple(CAT.heads))[0] == 2


def test_average_ranks_by_hand():
    """Ties share the mean of their positions (scipy's rankdata 'average'), row by row."""
    r = sp._rank_rows(np.array([[3, 1, 3, 2], [5, 5, 5, 5]]))
    assert r.tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]
    # Spearman of (1, 2, 3) with (1, 3, 3): ranks (1, 2, 3) and (1, 2.5, 2.5), centred (-1, 0, 1) and (-1, .5, .5):
    # 1.5 / sqrt(2 * 1.5) = 0.866
    assert np.isclose(sp._row_spearman(np.array([1, 2, 3]), np.array([1, 3, 3]))[0], 1.5 / np.sqrt(3.0))


def test_bad_trees_are_refused():
    with pytest.raises(ValueError, match="exactly one root"):
        sp.tree_depths([0, 0, 1])
    with pytest.raises(ValueError, match="cycle"):
        sp.tree_depths([2, 3, 2, 0])
    with pytest.raises(ValueError, match="head indices"):
        sp.tree_distances([4, 0])


def test_mst_of_gold_distances_is_the_tree():
    gold = {(0, 1), (1, 2), (3, 5), (4, 5), (2, 5), (2, 6)}
    assert sp.mst_edges(sp.tree_distances(CAT.heads)) == gold
    assert sp.mst_edges(np.zeros((1, 1))) == set()


def test_uuas_excludes_punctuation_and_counts_by_hand():
    gold = sp.tree_distances(CAT.heads).astype(float)
    # gold arcs between non-punctuation words: 5 ("." -> sat is left out)
    assert sp.uuas_counts(gold, CAT) == (5, 5)
    # a path in word order: MST over non-punct words = 0-1, 1-2, 2-3, 3-4, 4-5; correct: 0-1, 1-2, 4-5
    chain = np.abs(np.subtract.outer(np.arange(7), np.arange(7))).astype(float)
    assert sp.uuas_counts(chain, CAT) == (3, 5)
    res = sp.uuas([gold, chain], [CAT, CAT])
    assert res["correct"] == 8 and res["total"] == 10 and res["value"] == pytest.approx(0.8)


def test_distance_spearman_by_hand():
    gold = sp.tree_distances(CAT.heads).astype(float)
    value, table = sp.distance_spearman([gold], [CAT])
    assert value == pytest.approx(1.0) and table.length.tolist() == [7] and table.n.tolist() == [7]
    value, _ = sp.distance_spearman([-gold], [CAT])
    assert value == pytest.approx(-1.0)
    # two words whose rows are swapped in rank: word 0's row predicted as word 6's
    # lengths outside 5..50 do not count
    short = Sentence(words=["a", "b"], heads=[0, 1], deprels=["root", "dep"], upos=["X", "X"])
    value, table = sp.distance_spearman([np.array([[0, 1], [1, 0.0]])], [short])
    assert np.isnan(value) and table.length.tolist() == [2]


def test_root_accuracy_skips_punctuation_and_norm_spearman():
    depth = sp.tree_depths(CAT.heads).astype(float)
    assert sp.root_accuracy([depth], [CAT])["value"] == 1.0
    # punctuation predicted shallowest is ignored; next shallowest is "sat" -> correct
    p = depth.copy()
    p[6] = -5
    assert sp.root_accuracy([p], [CAT])["value"] == 1.0
    # "cat" shallowest -> wrong
    p = depth.copy()
    p[1] = -1
    assert sp.root_accuracy([p], [CAT]) == {"value": 0.0, "correct": 0, "total": 1}
    assert sp.norm_spearman([depth], [CAT])[0] == pytest.approx(1.0)
    # ranks of [0,1,2,3,4,5,6] against depths [2,1,0,2,2,1,1] (ranks 6,3,1,6,6,3,3): by hand
    r_gold = np.array([6, 3, 1, 6, 6, 3, 3], float)
    r_pred = np.arange(1, 8, dtype=float)
    a, b = r_gold - r_gold.mean(), r_pred - r_pred.mean()
    expected = (a * b).sum() / np.sqrt((a ** 2).sum() * (b ** 2).sum())
    assert sp.norm_spearman([np.arange(7.0)], [CAT])[0] == pytest.approx(expected)


def test_prediction_length_must_match():
    with pytest.raises(ValueError, match="sentence 0 has 7 words"):
        sp.uuas([np.zeros((3, 3))], [CAT])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        sp.root_accuracy([np.zeros(7), np.zeros(7)], [CAT])


# ----------------------------------------------------------------------------- planted tree metric


def _random_tree(rng, n):
    """A random tree on n words: word 0..n-1, each non-root attaches to an earlier-visited word."""
    order = rng.permutation(n)
    heads = [0] * n
    for k in range(1, n):
        heads[order[k]] = int(order[rng.integers(0, k)]) + 1
    return heads


def _planted_states(rng, n_sent, Q, max_len=9, noise_dims=6):
    """Word vectors x_i = sum of unit vectors e_c over the words c on the path from i up to (not
    including) the root, so ||x_i - x_j||^2 = tree distance and ||x_i||^2 = depth exactly; then
    noise dimensions are appended and everything is rotated by a random orthogonal matrix.
    Layer 0 holds pure noise of the same size."""
    D = max_len + noise_dims
    sents, layer0, layer1 = [], [], []
    for k in range(n_sent):
        n = int(rng.integers(4, max_len + 1))
        heads = _random_tree(rng, n)
        x = np.zeros((n, D))
        for i in range(n):
            j = i
            while heads[j] != 0:
                x[i, j] = 1.0
                j = heads[j] - 1
        x[:, max_len:] = rng.normal(size=(n, noise_dims))
        layer1.append(x @ Q.T)
        layer0.append(rng.normal(size=(n, D)))
        sents.append(Sentence(words=[f"w{i}" for i in range(n)], heads=heads, deprels=["dep"] * n,
                              upos=["X"] * n, sent_id=str(k)))
    states = np.stack([np.concatenate(layer0), np.concatenate(layer1)]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([s.n for s in sents])])
    return sp.WordStates(states, offsets, sents)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(15, 15)))  # one rotation shared by all splits
    return _planted_states(rng, 160, Q), _planted_states(rng, 40, Q), _planted_states(rng, 80, Q)


@pytest.mark.slow  # ~10-30 s on a 2-core CPU
def test_distance_probe_recovers_planted_tree_metric(planted):
    train, dev, test = planted
    fit = dict(rank=15, lr=0.05, max_epochs=25, batch_size=40, progress=False)
    probe = sp.fit_probe(train, dev, "distance", **fit)
    res = sp.evaluate(probe, test).set_index(["layer", "metric"]).value
    assert res[(1, "uuas")] > 0.95 and res[(1, "dspr")] > 0.9
    assert res[(0, "uuas")] < 0.6  # pure noise: no tree to find
    # same seed, same numbers (a short fit is enough to show it)
    short = {**fit, "max_epochs": 2}
    np.testing.assert_array_equal(sp.fit_probe(train, dev, "distance", **short).B,
                                  sp.fit_probe(train, dev, "distance", **short).B)
    tree = sp.predicted_tree(probe, test, 0, layer=1)
    assert tree["total"] == test.sentences[0].n - 1 and tree["correct"] >= tree["total"] - 1


def test_depth_probe_recovers_planted_depths(planted):
    train, dev, test = planted
    probe = sp.fit_probe(train, dev, "depth", rank=15, lr=0.05, max_epochs=25, batch_size=40, layers=[1],
                         progress=False)
    res = sp.evaluate(probe, test).set_index(["layer", "metric"]).value
    assert res[(1, "root_acc")] > 0.95 and res[(1, "nspr")] > 0.9
    assert list(probe.history.layer.unique()) == [1] and probe.B.shape == (1, 15, train.states.shape[-1])


def test_fit_probe_checks_arguments(planted):
    train, dev, _ = planted
    with pytest.raises(ValueError, match="kind"):
        sp.fit_probe(train, dev, "parse")
    with pytest.raises(ValueError, match="rank"):
        sp.fit_probe(train, dev, "depth", rank=0)
    with pytest.raises(ValueError, match="out of range"):
        sp.fit_probe(train, dev, "depth", layers=[5])


def test_word_states_are_mean_pooled_word_vectors(minilm):
    from bertology.extract import Item, extract

    sents = [CAT, Sentence(words=["Unbelievably", "short", "."], heads=[2, 0, 2], deprels=["advmod", "root", "punct"],
                           upos=["ADV", "ADJ", "PUNCT"])]
    ws = sp.word_states(minilm, sents, progress=False)
    assert ws.states.shape == (7, 10, 384) and ws.offsets.tolist() == [0, 7, 10] and ws.dropped == 0

    class Keep:
        items = {}

        def update(self, item: Item):
            self.items[item.index] = item.hidden

        def result(self):
            return self.items

    k = Keep()
    extract(minilm, [s.words for s in sents], k, attention=False, hidden_states=True, progress=False)
    # units are [CLS] words [SEP]: the word vectors are units 1..n
    np.testing.assert_allclose(ws.sentence(1), k.items[1][:, 1:4], atol=1e-5)
    np.testing.assert_allclose(ws.sentence(0, layer=3), k.items[0][3, 1:8], atol=1e-5)


# ----------------------------------------------------------------------------- Hewitt & Manning's definitions

# "w0 w1 , w3": w1 is the root, w0 -> w1, "," -> w1, and w3 hangs from the punctuation mark.
PUNCT_HEAD = Sentence(words=["w0", "w1", ",", "w3"], heads=[2, 0, 2, 3], deprels=["dep", "root", "punct", "dep"],
                      upos=["X", "X", "PUNCT", "X"], sent_id="punct-head")


def test_uuas_gold_is_the_spanning_tree_over_non_punctuation_words():
    # Non-punctuation words 0, 1, 3; gold distances d01 = 1, d13 = 2, d03 = 3.
    # Hewitt & Manning (reporter.py): gold = MST of those distances = {0-1, 1-3}, 2 edges.
    # Ours ("arcs"): only gold arcs joining two non-punctuation words = {0-1}, 1 edge.
    assert sp.gold_edges(PUNCT_HEAD) == {(0, 1), (1, 3)}
    assert sp.gold_edges(PUNCT_HEAD, "arcs") == {(0, 1)}
    # predicted distances that make w3 closest to w0: MST over {0,1,3} = {0-1, 0-3}
    pred = np.array([[0, 1, 9, 1.5], [1, 0, 9, 3], [9, 9, 0, 9], [1.5, 3, 9, 0]])
    assert sp.uuas_counts(pred, PUNCT_HEAD) == (1, 2)
    assert sp.uuas_counts(pred, PUNCT_HEAD, "arcs") == (1, 1)
    gold = sp.tree_distances(PUNCT_HEAD.heads).astype(float)
    assert sp.uuas([gold, pred], [PUNCT_HEAD, PUNCT_HEAD])["value"] == pytest.approx(3 / 4)
    assert sp.uuas([gold, pred], [PUNCT_HEAD, PUNCT_HEAD], "arcs")["value"] == pytest.approx(2 / 2)
    with pytest.raises(ValueError, match="uuas_gold"):
        sp.uuas([gold], [PUNCT_HEAD], "tree")


def test_dev_schedule_follows_reduce_on_plateau_and_their_early_stop():
    sch = sp.DevSchedule(lr=1e-3, patience=5)
    # epoch 1: first loss is always an improvement (save, no cut)
    assert sch.step(1.0) == {"save": True, "cut": False, "stop": False, "lr": 1e-3}
    # epoch 2: 0.99995 is 5e-5 below: less than 1e-4 relatively -> lr cut; less than 1e-4 absolutely -> no save
    s = sch.step(0.99995)
    assert (s["save"], s["cut"], s["stop"]) == (False, True, False) and s["lr"] == pytest.approx(1e-4)
    # epoch 3: 0.5 improves both ways: saved, lr stays
    s = sch.step(0.5)
    assert (s["save"], s["cut"]) == (True, False) and s["lr"] == pytest.approx(1e-4)
    # epochs 4-8: no improvement; cuts 1e-4 -> 1e-5 -> 1e-6 -> 1e-7 -> 1e-8, then the 1e-8 floor (eps) holds;
    # the 5th epoch without a save (epoch 8) stops, as `min_dev_loss_epoch < epoch_index - 4` in regimen.py
    steps = [sch.step(0.6) for _ in range(5)]
    assert [s["stop"] for s in steps] == [False, False, False, False, True]
    assert [s["cut"] for s in steps] == [True, True, True, True, False]
    assert steps[-1]["lr"] == pytest.approx(1e-8)


def test_shuffled_batches_are_a_fresh_partition_every_epoch():
    rng = np.random.default_rng(0)
    e1, e2 = sp.shuffled_batches(45, 20, rng), sp.shuffled_batches(45, 20, rng)
    assert [len(b) for b in e1] == [20, 20, 5]
    assert sorted(sum(e1, [])) == list(range(45)) and sorted(sum(e2, [])) == list(range(45))
    assert e1 != e2


def test_fit_probe_defaults_are_the_authors(planted):
    import inspect

    train, dev, _ = planted
    params = inspect.signature(sp.fit_probe).parameters
    for name in ("max_epochs", "patience", "lr", "batch_size", "batching"):
        assert params[name].default == sp.AUTHORS[name], name
    probe = sp.fit_probe(train, dev, "depth", layers=[1], max_epochs=1, progress=False)
    assert probe.rank == train.states.shape[-1] and probe.B.shape == (1, 15, 15)  # rank None = hidden size
    short = dict(layers=[1], max_epochs=2, progress=False)
    np.testing.assert_array_equal(sp.fit_probe(train, dev, "depth", 4, batching="length", **short).B,
                                  sp.fit_probe(train, dev, "depth", 4, batching="length", **short).B)
    with pytest.raises(ValueError, match="batching"):
        sp.fit_probe(train, dev, "depth", batching="sorted")


def test_declared_deviations_follow_the_options():
    from bertology import fidelity

    authors = dict(probe_rank=None, hidden_size=768, max_epochs=40, patience=5, lr=0.001, batching="shuffled",
                   uuas_gold="mst")
    keys = {d.key for d in fidelity.deviations("hewitt_manning.probe", **authors)}
    assert keys == {"ud", "punct_upos", "segment_ids"}
    ours = {**authors, "probe_rank": 128, "max_epochs": 6, "batching": "length", "uuas_gold": "arcs"}
    lines = fidelity.lines("hewitt_manning.probe", **ours)
    assert "Probe maximum rank 128 (Hewitt & Manning: the model's hidden size, 768)." in lines
    assert {d.key for d in fidelity.deviations("hewitt_manning.probe", **ours)} == keys | {
        "rank", "max_epochs", "batching", "uuas_gold"}
    # rank equal to the hidden size is the authors' setting
    assert "rank" not in {d.key for d in fidelity.deviations("hewitt_manning.probe", **{**authors, "probe_rank": 768})}


# ----------------------------------------------------------------------------- notebook 04 findings


def _probe_table(uuas, dspr, root_acc, nspr, model="m"):
    """A probe_layers-shaped table with the given value per layer (index = layer)."""
    rows = [(model, layer, kind, 8, metric, v, 10)
            for metric, kind, vals in [("uuas", "distance", uuas), ("dspr", "distance", dspr),
                                       ("root_acc", "depth", root_acc), ("nspr", "depth", nspr)]
            for layer, v in enumerate(vals)]
    return pd.DataFrame(rows, columns=["model", "layer", "kind", "rank", "metric", "value", "n"])


def test_findings_key_numbers_and_text_by_hand():
    model = _probe_table(uuas=[0.2, 0.5, 0.5], dspr=[0.1, 0.6, 0.7], root_acc=[0.25, 0.4, 0.9], nspr=[0.3, 0.8, 0.6])
    control = _probe_table(uuas=[0.1, 0.3, 0.15], dspr=[0] * 3, root_acc=[0] * 3, nspr=[0] * 3, model="c")
    f = sp.findings(model, control)
    # UUAS ties at layers 1 and 2 -> the lower layer; the depth probe's best layer is by NSpr. (layer 1), not root%
    assert f == {"best_layer_uuas": 1, "uuas_best": 0.5, "dspr_best": 0.6, "uuas_layer0": 0.2, "uuas_control_best": 0.3,
                 "best_layer_nspr": 1, "nspr_best": 0.8, "root_acc_best": 0.4, "nspr_layer0": 0.3, "root_acc_layer0": 0.25}
    assert sp.key_numbers(f) == {"UUAS, best layer (1)": 0.5, "UUAS, layer 0 (embeddings)": 0.2,
                                 "UUAS, random-init control (best layer)": 0.3}
    sweep = _probe_table(uuas=[0.1], dspr=[0.2], root_acc=[0.3], nspr=[0.4]).assign(layer=1)
    sweep = pd.concat([sweep.assign(rank=16, value=sweep.value + 0.5), sweep.assign(rank=4)], ignore_index=True)
    lines = sp.findings_text(f, sweep, "tiny", 12, 32)
    assert lines[0].startswith("**Structural probe (tiny, 12 train sentences, rank 32)**: the best layer for the "
                               "distance probe is **1** with UUAS **0.500** and DSpr. 0.600; layer 0 (embeddings) "
                               "reaches UUAS 0.200 and the random-init control at most 0.300.")
    assert lines[0].endswith("add structure beyond the embeddings.")  # 0.5 - max(0.2, 0.3) = 0.2 > 0.05
    assert lines[1] == "**Depth probe**: best layer 1, NSpr. 0.800 and root% 0.400 (layer 0: 0.300 / 0.250)."
    assert lines[2] == "**Rank**: at layer 1, UUAS goes from 0.100 (rank 4) to 0.600 (rank 16)."
    close = {**f, "uuas_control_best": 0.48}  # gain 0.02 over the control
    assert sp.findings_text(close, sweep.iloc[:0], "tiny", 12, 32)[0].endswith("add little beyond the baselines.")
    assert len(sp.findings_text(close, sweep.iloc[:0], "tiny", 12, 32)) == 2  # no sweep, no rank line


def test_reference_text_reads_its_ranges_from_the_table():
    rows = sp.reference_rows(64)
    assert rows["rank"].isna().sum() == 1 and sorted(rows["rank"].dropna().unique()) == [64, 128, 256, 512]
    text = sp.reference_text()
    assert "at **80 UUAS**" in text and "UUAS 0.795–0.799 and DSpr. 0.84–0.85 at ranks ≥ 64" in text
    assert "UUAS 0.797 and DSpr. 0.85 at ranks ≥ 256" in sp.reference_text(256)


def test_notebook_helpers_for_splits(planted):
    train, dev, test = planted
    states = {"train": train, "dev": dev, "test": test}
    assert sp.dropped_notes(states) == []
    long = sp.WordStates(test.states, test.offsets, test.sentences, dropped=2)
    assert sp.dropped_notes({"train": train, "test": long}) == [
        "Sentences longer than the model's maximum length were left out: {'test': 2}."]
    # the first test sentence of 10-16 words; the planted sentences have 4-9, so 4-5 words here
    k = sp.example_sentence(test, 4, 5)
    assert test.sentences[k].n in (4, 5) and all(s.n > 5 for s in test.sentences[:k])
    assert sp.example_sentence(test) == 0  # none of 10-16 words
    assert sp.data_deviation("UD X", 3, 2, 1) == ("Data: UD X, 3 train / 2 dev / 1 test sentences "
                                                  "(Hewitt & Manning: 39,832 WSJ train sentences).")
    fit = dict(max_epochs=1, batch_size=40, progress=False)
    sweep = sp.rank_sweep(states, [2, 3, 2], 1, label="tiny", **fit)  # a repeated rank is fitted once
    assert sweep.columns.tolist() == ["model", "layer", "kind", "rank", "metric", "value", "n"]
    assert set(sweep.model) == {"tiny"} and set(sweep.layer) == {1} and sweep["rank"].tolist() == [2] * 4 + [3] * 4
    table, probes = sp.fit_splits(states, 2, label="tiny", layers=[1], **fit)
    assert table.equals(sweep[sweep["rank"] == 2].reset_index(drop=True))  # same seed, same fit
    rec = sp.fit_record(probes)
    assert rec["probe_best_epoch"] == {"distance": {1: 1}, "depth": {1: 1}} and set(rec["probe_seconds"]) == {"distance", "depth"}
    import matplotlib.pyplot as plt

    from bertology import plots_probes

    fig = plots_probes.rank_sweep(sweep, reference=sp.REFERENCE)  # one line per model and layer, plus the reference
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["tiny, layer 1", "BERT-base (H&M layer 7), PTB (reference)"]
    plt.close(fig)


def test_predict_under_autocast_keeps_small_distances():
    """Only the projection runs in bfloat16: distances come from float32 norms, so two nearby words
    keep a small positive distance (in bfloat16, |a|² + |b|² − 2ab of norms ~100 rounds to 0 or ~1)."""
    B = torch.eye(4)[None]  # identity probe: distances are plain squared distances
    x = torch.tensor([[[10.0, 0, 0, 0], [10.0, 0.25, 0, 0], [0, 10.0, 0, 0]]])  # (layers, words, D)
    slots = torch.arange(3)  # one sentence of three words
    exact = sp._predict(sp._project(B, x, slots, 1, 3), "distance")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sp._predict(sp._project(B, x, slots, 1, 3), "distance")
    assert low.dtype == torch.float32
    assert exact[0, 0, 0, 1].item() == pytest.approx(0.0625)
    assert low[0, 0, 0, 1].item() == pytest.approx(0.0625, rel=0.02)  # 10 and 0.25 are exact in bfloat16
    torch.testing.assert_close(low, exact, rtol=1e-2, atol=1e-3)


def test_projection_places_words_and_leaves_padding_zero():
    """Two sentences of 2 and 3 words, padded to 3: the packed product puts each word's Bx at its
    slot, exactly as projecting the zero-padded grid would, and the padding row stays zero."""
    B = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])  # (1 layer, rank 2, D 2)
    x = torch.tensor([[[1.0, 0], [0, 1.0], [1.0, 1.0], [2.0, 0], [0, 0.5]]])  # 5 words
    slots = torch.tensor([0, 1, 3, 4, 5])  # sentence 0 → grid rows 0-1, sentence 1 → rows 3-5
    z = sp._project(B, x, slots, 2, 3)
    expected = torch.zeros(1, 2, 3, 2)
    expected[0, 0, :2] = torch.tensor([[1.0, 0], [2.0, 1.0]])  # B @ (1,0) and B @ (0,1)
    expected[0, 1] = torch.tensor([[3.0, 1.0], [2.0, 0], [1.0, 0.5]])
    torch.testing.assert_close(z, expected)
    grid = torch.zeros(1, 6, 2).index_copy(1, slots, x).view(1, 2, 3, 2)
    torch.testing.assert_close(z, torch.einsum("lrd,lbnd->lbnr", B, grid))


def test_stopped_layers_leave_the_fit_and_keep_their_best_parameters(planted):
    """Layer 0 holds noise and stops early; its history ends there and its parameters are the ones
    saved at its best epoch, while layer 1 trains on to the end."""
    train, dev, _ = planted
    probe = sp.fit_probe(train, dev, "distance", rank=15, lr=0.05, max_epochs=12, patience=2, batch_size=40,
                         progress=False)
    last = probe.history.groupby("layer").epoch.max()
    assert last[0] == probe.best_epoch[0] + 2 < 12 and last[1] == 12
    alone = sp.fit_probe(train, dev, "distance", rank=15, lr=0.05, max_epochs=probe.best_epoch[0], batch_size=40,
                         layers=[0], progress=False)  # the same start and batches, stopped at layer 0's best epoch
    np.testing.assert_allclose(probe.B[0], alone.B[0], rtol=1e-5, atol=1e-6)


def test_bfloat16_fit_matches_float32_on_the_planted_tree(planted):
    train, dev, test = planted
    fit = dict(rank=15, lr=0.05, max_epochs=8, batch_size=40, layers=[1], progress=False)
    p32 = sp.fit_probe(train, dev, "distance", **fit)
    pbf = sp.fit_probe(train, dev, "distance", precision="bfloat16", **fit)
    assert not np.array_equal(p32.B, pbf.B)  # autocast really ran
    r32 = sp.evaluate(p32, test).set_index("metric").value
    rbf = sp.evaluate(pbf, test).set_index("metric").value
    assert abs(r32["uuas"] - rbf["uuas"]) < 0.02 and abs(r32["dspr"] - rbf["dspr"]) < 0.02
    with pytest.raises(ValueError, match="precision must be one of"):
        sp.fit_probe(train, dev, "distance", precision="half", **fit)


def _tiny_run(tmp_path, tokenizer, mlm=False):
    """A notebook run (bertology.notebook.Run) around a tiny random BERT, without start()."""
    from bertology.models import random_bert
    from bertology.notebook import Run

    loaded = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=mlm, seed=0, name="tiny")
    return Run("04_syntax_probes", loaded, tmp_path, 0, True, "cpu", {"notes": [], "deviations": []})


def test_probe_splits_record_the_data(tmp_path, tokenizer):
    run = _tiny_run(tmp_path, tokenizer)
    splits = sp.probe_splits(run, "sample", 6, 4, 5, language_note=lambda lang: f"not {lang}")
    assert list(splits) == ["train", "dev", "test"] and [len(s) for s in splits.values()] == [6, 4, 5]
    assert run.meta["data"] == "bertology sample treebank: train/dev/test"
    assert run.meta["sizes"] == {"sentences": 5, "n_train": 6, "n_dev": 4, "n_test": 5}
    assert sp.data_deviation("bertology sample treebank", 6, 4, 5) in run.meta["deviations"]
    assert not any(n.startswith("not ") for n in run.meta["notes"])  # English: no language note


@pytest.mark.slow  # a few seconds: two tiny models, one epoch
def test_probe_study_is_its_parts(tmp_path, tokenizer):
    from bertology.models import random_init_control

    run = _tiny_run(tmp_path, tokenizer)
    splits = sp.probe_splits(run, "sample", 12, 6, 8)
    kw = dict(max_epochs=1, patience=5, lr=1e-3, batching="shuffled", uuas_gold="mst")
    ps = sp.probe_study(run, splits, 4, batch_size=8, progress=False, **kw)
    # by hand: the same steps one by one give the same tables
    fit = dict(kw, seed=0, device=run.loaded.device, precision="float32", progress=False)
    states = sp.split_states(run.loaded, splits, batch_size=8, progress=False)
    model_table, probes = sp.fit_splits(states, 4, label="tiny", **fit)
    control = sp.split_states(random_init_control(run.loaded, seed=0), splits, batch_size=8, progress=False)
    control_table, _ = sp.fit_splits(control, 4, label="random-init control", **fit)
    pd.testing.assert_frame_equal(ps.model_table, model_table)
    pd.testing.assert_frame_equal(ps.control_table, control_table)
    assert ps.table.equals(pd.concat([model_table, control_table], ignore_index=True))
    assert ps.summary == sp.findings(model_table, control_table) and ps.best == ps.summary["best_layer_uuas"]
    assert ps.fit == {**kw, "seed": 0, "device": run.loaded.device, "precision": "float32"}
    # what the run keeps
    assert run.values["probe_summary"] == ps.summary
    assert set(run.values["key_numbers"]) == set(sp.key_numbers(ps.summary))
    assert run.values["probe_best_epoch"] == sp.fit_record(probes)["probe_best_epoch"]
    assert run.meta["methods"]["hewitt_manning.probe"] == {"probe_rank": 4, "hidden_size": 16, **kw}
    # the example tree: the best layer's distance probe on the first test sentence of 10-16 words
    k = sp.example_sentence(ps.states["test"])
    assert sp.example_tree(ps) == sp.predicted_tree(probes["distance"], states["test"], k, layer=ps.best)


def test_control_layer_set_spaces_layers_and_keeps_the_best():
    assert sp.control_layer_set(13, 4) == [0, 4, 8, 12]  # 12 / 3 apart
    assert sp.control_layer_set(13, 4, best=[7, 5]) == [0, 4, 5, 7, 8, 12]
    assert sp.control_layer_set(7, 4, best=[6]) == [0, 2, 4, 6]  # a best layer already there
    assert sp.control_layer_set(13, 2) == [0, 12]
    assert sp.control_layer_set(13, 0, best=[7, 5]) == [5, 7] and sp.control_layer_set(13, 0, best=[3, 3]) == [3]
    with pytest.raises(ValueError, match="best layers"):
        sp.control_layer_set(13, 0)
    assert sp.control_layer_set(7, None) == sp.control_layer_set(7, 7) == list(range(7))  # every layer
    with pytest.raises(ValueError, match="control_layers"):
        sp.control_layer_set(13, 1)
    with pytest.raises(ValueError, match="control_layers"):  # checked before it is compared
        sp.control_layer_set(13, "4")


def test_check_parameters_names_the_parameter():
    from bertology.notebook import ParameterError

    sp.check_parameters([4, 16], "length", "arcs")  # fine
    with pytest.raises(ParameterError, match="'probe_batching'"):
        sp.check_parameters([4], "sorted")
    with pytest.raises(ParameterError, match="'control_layers'"):
        sp.check_parameters([4], control_layers=1)
    with pytest.raises(ParameterError, match="'uuas_gold'"):
        sp.check_parameters([4], uuas_gold="tree")
    for bad in ([], [0], [4.0], 4):
        with pytest.raises(ParameterError, match="'ranks' must be a list of positive integers"):
            sp.check_parameters(bad)


@pytest.mark.parametrize("kind", ["distance", "depth"])
def test_ranks_fitted_together_equal_fits_of_one_rank(planted, kind):
    """fit_probes fits several ranks in one loop; each rank's probe is the probe a fit of that rank
    alone gives: same start, batches, per-layer schedule and early stop (layer 0 holds noise and
    stops early), up to float rounding."""
    train, dev, _ = planted
    fit = dict(lr=0.05, max_epochs=6, patience=2, batch_size=40, progress=False)
    together = sp.fit_probes(train, dev, kind, [4, 15], **fit)
    assert [p.rank for p in together] == [4, 15]
    for p in together:
        alone = sp.fit_probe(train, dev, kind, p.rank, **fit)
        assert p.B.shape == alone.B.shape == (2, p.rank, 15) and p.layers == alone.layers == [0, 1]
        np.testing.assert_allclose(p.B, alone.B, rtol=1e-4, atol=1e-6)
        assert p.best_epoch == alone.best_epoch
        pd.testing.assert_frame_equal(p.history[["epoch", "layer", "lr"]], alone.history[["epoch", "layer", "lr"]])
        np.testing.assert_allclose(p.history.dev_loss, alone.history.dev_loss, rtol=1e-5)
    with pytest.raises(ValueError, match="distinct"):
        sp.fit_probes(train, dev, kind, [4, 4], **fit)


def test_word_states_up_to_a_layer_run_only_the_layers_below(tokenizer):
    """top=k: the states of layers 0..k, the same as those of the full pass, from a model that ran
    k transformer layers (at least one; counted with a hook)."""
    from bertology.data import load_treebank
    from bertology.interventions import layer_stack
    from bertology.models import random_bert

    lm = random_bert(tokenizer, n_layers=4, n_heads=2, seed=0)
    sents = list(load_treebank("sample", "dev", limit=6))
    full = sp.word_states(lm, sents, batch_size=4, progress=False)
    calls = []
    hooks = [m.register_forward_hook(lambda *_, d=d: calls.append(d)) for d, m in enumerate(layer_stack(lm.model).layer)]
    for k in (0, 2, 4):
        calls.clear()
        ws = sp.word_states(lm, sents, batch_size=4, progress=False, top=k)
        assert ws.states.shape[0] == k + 1 and np.array_equal(ws.states, full.states[: k + 1])
        assert sorted(set(calls)) == list(range(max(k, 1))) and ws.offsets.tolist() == full.offsets.tolist()
    for h in hooks:
        h.remove()
    assert len(layer_stack(lm.model).layer) == 4  # the stack is whole again
    with pytest.raises(ValueError, match="top must be a layer in 0..4"):
        sp.word_states(lm, sents, progress=False, top=5)


def test_word_states_up_to_a_layer_of_albert_run_every_layer(tokenizer):
    """ALBERT shares one layer group across depth, so no layer can be left out: top=k still gives
    layers 0..k, from the full pass."""
    from transformers import AlbertConfig

    from bertology.data import load_treebank
    from bertology.models import random_from_config

    cfg = AlbertConfig(vocab_size=tokenizer.vocab_size, embedding_size=8, hidden_size=16, num_hidden_layers=3,
                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=128)
    lm = random_from_config(cfg, tokenizer, False, 0, "tiny-albert", "cpu")
    sents = list(load_treebank("sample", "dev", limit=4))
    full = sp.word_states(lm, sents, progress=False)
    ws = sp.word_states(lm, sents, progress=False, top=1)
    assert full.states.shape[0] == 4 and np.array_equal(ws.states, full.states[:2])
