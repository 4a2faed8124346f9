import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from bertology import clustering as cl
from bertology import extract as ex

LN2 = math.log(2)


def item(attention, index=0):
    """An Item with no encoding: HeadDistances only reads the maps."""
    return ex.Item(index=index, encoding=None, attention=np.asarray(attention, dtype=np.float32), hidden=None)


def rows(*dists):
    """(T, T) map whose every query row is the given distribution (one per query)."""
    return np.array(dists, dtype=float)


def _three_heads(**kw):
    """1 layer x 3 heads over two inputs. Input 1 (2 queries): head 0 -> [1,0], head 1 -> [0,1],
    head 2 -> [.5,.5] for both queries. Input 2 (3 queries): all heads uniform (JS 0)."""
    a1 = np.stack([rows([1, 0], [1, 0]), rows([0, 1], [0, 1]), rows([.5, .5], [.5, .5])])[None]
    a2 = np.full((1, 3, 3, 3), 1 / 3)
    red = cl.HeadDistances(1, 3, **kw)
    red.update(item(a1, 0))
    red.update(item(a2, 1))
    return red.result()


@pytest.fixture
def three_heads():
    """Our options: exact JS (no smoothing), averaged over the 5 query tokens."""
    return _three_heads(reduce="mean", smoothing=0.0)


def js_by_formula(p, q):
    """0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2, natural log (all entries > 0)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = (p + q) / 2
    return float(0.5 * (p * np.log(p / m)).sum() + 0.5 * (q * np.log(q / m)).sum())


def test_authors_js_is_smoothed_and_summed():
    """Default = head_distances.py: rows smoothed 0.999 p + 0.001 / n, JS summed over queries and inputs."""
    r = _three_heads()
    sm = lambda row: 0.999 * np.asarray(row, float) + 0.001 / len(row)  # noqa: E731
    # two queries of input 1 differ; input 2 is uniform for every head (smoothing keeps it uniform: 0)
    assert r.matrix[0, 1] == pytest.approx(2 * js_by_formula(sm([1, 0]), sm([0, 1])), rel=1e-5)
    assert r.matrix[0, 2] == pytest.approx(2 * js_by_formula(sm([1, 0]), sm([.5, .5])), rel=1e-5)
    # smoothing pulls disjoint one-hots below ln 2 (per query); the exact value would be 2 ln 2
    assert r.matrix[0, 1] < 2 * LN2 - 1e-3
    assert r.reduce == "sum" and r.n_queries == 5
    # "mean" is the same matrix divided by the number of query tokens
    mean = _three_heads(reduce="mean")
    assert np.allclose(mean.matrix * 5, r.matrix)
    with pytest.raises(ValueError, match="reduce"):
        cl.HeadDistances(1, 3, reduce="median")


def test_js_by_hand(three_heads):
    d = three_heads.matrix
    # [1,0] vs [0,1]: m = [.5,.5], KL = ln 2 each -> ln 2; two such queries out of 2 + 3
    assert d[0, 1] == pytest.approx(2 * LN2 / 5, abs=1e-6)
    # [.5,.5] vs [1,0]: m = [.75,.25]; KL(p||m) = .5 ln(4/3), KL(q||m) = ln(4/3) -> .75 ln(4/3)
    assert d[0, 2] == pytest.approx(2 * 0.75 * math.log(4 / 3) / 5, abs=1e-6)
    assert d[1, 2] == pytest.approx(d[0, 2], abs=1e-7)
    assert three_heads.n_queries == 5 and three_heads.n_inputs == 2


def test_matrix_and_table(three_heads):
    d = three_heads.matrix
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0)
    t = three_heads.table()
    assert len(t) == 3 and list(t.columns) == ["layer_a", "head_a", "layer_b", "head_b", "value", "n"]
    assert t.set_index(["head_a", "head_b"]).loc[(0, 1), "value"] == pytest.approx(2 * LN2 / 5, abs=1e-6)
    assert three_heads.labels == ["1-1", "1-2", "1-3"]
    assert three_heads.frame().loc["1-3", "1-1"] == d[2, 0]


def test_identical_heads_and_per_query_average():
    # head 0 alternates [1,0], [0,1]; head 1 always [1,0]: JS 0 on query 0, ln 2 on query 1
    a = np.stack([rows([1, 0], [0, 1]), rows([1, 0], [1, 0]), rows([1, 0], [0, 1])])[None]
    red = cl.HeadDistances(1, 3, reduce="mean", smoothing=0.0)
    red.update(item(a))
    d = red.result().matrix
    assert d[0, 1] == pytest.approx(LN2 / 2, abs=1e-6)
    assert d[0, 2] == 0.0  # identical heads


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="layers x heads"):
        cl.HeadDistances(2, 3).update(item(np.full((1, 3, 2, 2), 0.5)))


def test_chunked_equals_unchunked_with_384_heads():
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.full(4, 0.3), size=(24, 16, 4)).astype(np.float32)  # 384 heads, T = 4
    iu = np.triu_indices(384, 1)
    whole = cl.pairwise_js(a, smoothing=0.0, chunk_elements=1 << 30)  # one block
    tiny = cl.pairwise_js(a, smoothing=0.0, chunk_elements=50)  # one (query, key) column and few heads per block
    assert np.allclose(whole[iu], tiny[iu], atol=1e-5)
    flat = a.reshape(384, 4, 4)
    for i, j in [(0, 1), (5, 383), (200, 201)]:  # against scipy's JS distance, squared
        ref = sum(jensenshannon(flat[i, t], flat[j, t]) ** 2 for t in range(4))
        assert whole[i, j] == pytest.approx(ref, abs=1e-5)
    smoothed = cl.pairwise_js(a)  # default: the authors' smoothing, then the same sum
    sm = 0.999 * flat.astype(np.float64) + 0.001 / 4
    for i, j in [(0, 1), (5, 383)]:
        ref = sum(jensenshannon(sm[i, t], sm[j, t]) ** 2 for t in range(4))
        assert smoothed[i, j] == pytest.approx(ref, abs=1e-5)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_gpu_equals_cpu():
    rng = np.random.default_rng(1)
    a = rng.dirichlet(np.full(6, 0.5), size=(4, 8, 6)).astype(np.float32)
    iu = np.triu_indices(32, 1)
    cpu = cl.pairwise_js(a)
    for ce in (None, 100):
        assert np.allclose(cl.pairwise_js(a, device="cuda", chunk_elements=ce)[iu], cpu[iu], atol=1e-5)


def test_planted_model(planted):
    """Planted heads ([CLS], previous, uniform, last) on '[CLS] the cat sat . [SEP]', '[CLS] dogs bark [SEP]'."""
    red = cl.HeadDistances(2, 4, reduce="mean", smoothing=0.0)
    ex.extract(planted, [["the", "cat", "sat", "."], ["dogs", "bark"]], red, level="token", progress=False)
    r = red.result()
    d = r.matrix
    assert r.n_queries == 10
    assert d[0, 3] == pytest.approx(LN2, abs=1e-6)  # [CLS] vs last token: disjoint one-hots
    # [CLS] vs previous: equal on queries 0 and 1 of each input, disjoint on the other 4 + 2
    assert d[0, 1] == pytest.approx(6 * LN2 / 10, abs=1e-6)
    assert d[0, 4] == pytest.approx(0, abs=1e-6) and d[2, 6] == pytest.approx(0, abs=1e-6)  # layers alike


# ----------------------------------------------------------------------------- MDS, linkage


def _pairwise(xy):
    return np.linalg.norm(xy[:, None] - xy[None], axis=-1)


@pytest.mark.parametrize("points", [
    np.array([[0, 0], [1, 0], [2, 0], [3, 0]], float),  # a line
    np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float),  # a unit square
])
def test_mds_recovers_distances(points):
    d = _pairwise(points)
    xy = cl.mds_embedding(d, seed=0)
    assert xy.shape == (4, 2)
    assert np.allclose(_pairwise(xy), d, atol=1e-3)  # rotation/reflection do not change distances
    assert np.array_equal(xy, cl.mds_embedding(d, seed=0))


def block_matrix(n_layers=4, n_heads=4):
    """Within-layer distance 0, between-layer distance 1."""
    lay = np.repeat(np.arange(n_layers), n_heads)
    return (lay[:, None] != lay[None, :]).astype(float)


def test_result_mds_frame():
    r = cl.HeadDistanceResult(block_matrix(2, 2), 2, 2, 10, 1)
    m = r.mds(seed=0)
    assert list(m.columns) == ["layer", "head", "label", "x", "y"]
    assert list(m["label"]) == ["1-1", "1-2", "2-1", "2-2"]
    assert np.allclose(_pairwise(m[["x", "y"]].to_numpy()), block_matrix(2, 2), atol=1e-3)


def test_linkage_groups_layers():
    z, labels = cl.head_linkage(block_matrix(3, 2), ["1-1", "1-2", "2-1", "2-2", "3-1", "3-2"])
    assert labels[2] == "2-1"
    assert np.allclose(z[:3, 2], 0) and np.allclose(z[3:, 2], 1)  # pairs merge at 0, layers at 1
    assert sorted(map(frozenset, [z[k, :2].astype(int) for k in range(3)])) == sorted(
        [frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})])


# ----------------------------------------------------------------------------- same layer, alike?


def test_permutation_test_perfect_layers():
    res = cl.layer_similarity(block_matrix(4, 4), n_heads=4, n_permutations=200, seed=0)
    assert res["within_mean"] == 0 and res["between_mean"] == 1 and res["difference"] == 1
    # no permutation of 16 heads into 4 layers of 4 recreates the layers (1 in ~2.6 million)
    assert res["p_value"] == pytest.approx(1 / 201)


def test_permutation_test_all_equal():
    d = np.full((12, 12), 0.3)
    np.fill_diagonal(d, 0)
    res = cl.layer_similarity(d, n_heads=3, n_permutations=99, seed=1)
    assert res["within_mean"] == pytest.approx(0.3) and res["between_mean"] == pytest.approx(0.3)
    assert res["p_value"] == pytest.approx(1.0)  # every permutation ties the observed difference


def test_permutation_test_is_seeded_and_checks_sizes():
    rng = np.random.default_rng(3)
    d = rng.random((6, 6))
    d = d + d.T
    np.fill_diagonal(d, 0)
    assert cl.layer_similarity(d, 2, 50, seed=7) == cl.layer_similarity(d, 2, 50, seed=7)
    with pytest.raises(ValueError, match="whole number"):
        cl.layer_similarity(d, 4)


def test_layer_block_means():
    d = block_matrix(2, 3)
    d[0, 1] = d[1, 0] = 0.6  # one within-layer pair of layer 1 moves apart
    t = cl.layer_block_means(d, 3).set_index(["layer_a", "layer_b"])["value"]
    assert t[(0, 0)] == pytest.approx(2 * 0.6 / 6)  # 6 ordered pairs of distinct heads
    assert t[(1, 1)] == 0 and t[(0, 1)] == 1 and t[(1, 0)] == 1


# ----------------------------------------------------------------------------- behaviours


def patterns_table(values: dict) -> pd.DataFrame:
    """Long AttentionPatterns-style table from {(layer, head): {metric: value}}; unset metrics 0,
    entropy 0 of uniform 3."""
    metrics = ["to_cls", "to_sep", "to_punct", "to_prev", "to_next", "entropy", "uniform_entropy"]
    rows = []
    for (layer, head), v in values.items():
        v = {"uniform_entropy": 3.0, **v}
        rows += [(layer, head, m, v.get(m, 0.0), 10) for m in metrics]
    return pd.DataFrame(rows, columns=["layer", "head", "metric", "value", "n"])


def test_head_behaviours():
    p = patterns_table({
        (0, 0): {"to_cls": 0.9},
        (0, 1): {"to_sep": 0.51},
        (0, 2): {"to_prev": 0.6, "to_punct": 0.7},  # both over half: the larger wins
        (0, 3): {"to_next": 0.8},
        (1, 0): {"to_sep": 0.5, "entropy": 2.5},  # exactly half is not "more than half"; 2.5 >= 0.8 * 3
        (1, 1): {"entropy": 2.3},  # below 0.8 * 3 and no dominant target
        (1, 2): {"to_prev": 0.55},
        (1, 3): {"to_cls": 0.2},
    })
    b = cl.head_behaviours(p, extra={(1, 2): "nsubj", "2-4": "dobj"}, rule="relative")
    b = b.set_index(["layer", "head"])["behaviour"]
    assert list(b) == ["[CLS]", "[SEP]", "punctuation", "next token", "broad", "other", "nsubj", "dobj"]
    relaxed = cl.head_behaviours(p, rule="relative", share=0.4).set_index(["layer", "head"])
    assert relaxed.loc[(1, 0), "behaviour"] == "[SEP]"
    with pytest.raises(KeyError):
        cl.head_behaviours(p, extra={(5, 0): "x"})
    with pytest.raises(ValueError, match="rule"):
        cl.head_behaviours(p, rule="mine")


def test_clark_behaviour_rules():
    """General_Analysis.ipynb: next > .5, previous > .5, entropy > 3.8, [CLS] > .6, [SEP] > .6,
    punctuation > .6, each later rule that holds overriding the earlier ones; then the extra heads."""
    p = patterns_table({
        (0, 0): {"to_next": 0.55, "to_prev": 0.45},  # next
        (0, 1): {"to_sep": 0.55},  # not above 0.6: other (the relative rule says [SEP])
        (0, 2): {"to_prev": 0.7, "entropy": 3.9},  # broad overrides previous
        (0, 3): {"to_cls": 0.65, "entropy": 4.0},  # [CLS] overrides broad
        (1, 0): {"to_punct": 0.62, "to_sep": 0.3, "entropy": 3.81},  # punctuation overrides broad
        (1, 1): {"entropy": 3.8, "uniform_entropy": 3.9},  # not above 3.8: other (relative: broad)
        (1, 2): {"to_next": 0.5},  # exactly 0.5 is not above it
        (1, 3): {"to_sep": 0.61, "to_next": 0.6},  # [SEP] overrides next
    })
    b = cl.head_behaviours(p, extra={(1, 2): "det"}).set_index(["layer", "head"])["behaviour"]
    assert list(b) == ["next token", "other", "broad", "[CLS]", "punctuation", "other", "det", "[SEP]"]
    rel = cl.head_behaviours(p, rule="relative").set_index(["layer", "head"])["behaviour"]
    assert rel[(0, 1)] == "[SEP]" and rel[(1, 1)] == "broad"
    assert [r[0] for r in cl.CLARK_BEHAVIOUR_RULES] == ["next token", "previous token", "broad", "[CLS]", "[SEP]",
                                                        "punctuation"]


def test_behaviours_of_planted_heads(planted):
    from bertology.attention import AttentionPatterns

    red = AttentionPatterns(2, 4)
    ex.extract(planted, [["the", "cat", "sat", "."], ["dogs", "bark"]], red, level="token", progress=False)
    b = cl.head_behaviours(red.result())
    # the uniform head over 6 and 4 positions has entropy (ln 6 + ln 4) / 2 = 1.6 nats, far below 3.8
    assert list(b[b.layer == 1]["behaviour"]) == ["[CLS]", "previous token", "other", "[SEP]"]
    b = cl.head_behaviours(red.result(), rule="relative")
    assert list(b[b.layer == 1]["behaviour"]) == ["[CLS]", "previous token", "broad", "[SEP]"]


# ----------------------------------------------------------------------------- figures


def test_figures_build():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bertology import plots_clustering as pc

    r = cl.HeadDistanceResult(block_matrix(3, 2), 3, 2, 10, 1)
    coords = r.mds(seed=0).assign(behaviour=["[CLS]", "other", "broad", "other", "nsubj", "[SEP]"])
    for fig in (pc.mds_map(coords, hue="behaviour", annotate=True), pc.mds_map(coords, hue="layer"),
                pc.dendrogram(*cl.head_linkage(r.matrix, r.labels))):
        assert isinstance(fig, matplotlib.figure.Figure)
        plt.close(fig)



def test_mds_of_heads_that_are_all_alike_is_finite():
    """ALBERT's shared layer gives near-identical heads; the classical start degenerates (NaN) and the
    embedding falls back to a random start instead of failing."""
    import numpy as np

    from bertology.clustering import mds_embedding, pairwise_js

    xy = mds_embedding(np.zeros((4, 4)), seed=0)
    assert xy.shape == (4, 2) and np.isfinite(xy).all()
    p = np.full((3, 2, 5), 0.2)  # three identical heads: JS exactly 0, never below
    js = pairwise_js(p)
    assert (np.triu(js, 1) >= 0).all() and np.allclose(np.triu(js, 1), 0, atol=1e-6)


def test_findings_text_and_key_numbers_by_hand():
    same = {"within_mean": 0.125, "between_mean": 0.25, "p_value": 0.01, "n_permutations": 99}
    behaviour = pd.DataFrame({"behaviour": ["broad", "other", "broad", "[CLS]", "broad", "other"]})
    pairs = pd.DataFrame({"layer_a": [0, 0, 1], "head_a": [0, 1, 0], "layer_b": [0, 1, 1], "head_b": [1, 0, 1],
                          "value": [0.3, 0.05, 0.2], "n": 10})
    lines = cl.findings_text(same, behaviour, pairs, reduce="mean")
    assert lines == ["Heads in the same layer are **more alike than heads of different layers**: mean JS distance 0.125 nats "
                     "within layers vs 0.250 between (permutation p = 0.01, 99 permutations).",
                     "Behaviours: broad 3, other 2, [CLS] 1.",
                     "Closest pair of heads: 1-2 and 2-1 (JS 0.050 nats)."]
    summed = cl.findings_text({**same, "p_value": 0.05}, behaviour, pairs, reduce="sum")[0]
    assert "**not detectably more alike than heads of different layers**: summed JS distance" in summed
    assert cl.key_numbers(same) == {"JS distance within layers (nats)": 0.125, "JS distance between layers (nats)": 0.25,
                                    "same-layer permutation p-value": 0.01}
    assert cl.reference_text().startswith("**Clark et al. (2019) on BERT-base")
    from bertology import plots_clustering as pc

    assert set(pc.JS_AXIS_LABELS) == set(cl.REDUCES)
