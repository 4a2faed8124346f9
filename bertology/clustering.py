"""Clustering attention heads by how alike they attend (Clark et al. 2019, §6, Fig. 6).

Two heads are close when, for the same query token, they spread attention the same way: the
distance is the Jensen-Shannon divergence (natural log, so it lies in [0, ln 2] per query) between
their smoothed attention rows, summed over every query token of every input, as the authors'
``head_distances.py`` (clarkkev/attention-analysis) computes it. :class:`HeadDistances` streams it
as a reducer for :func:`bertology.extract.extract`; the rest works on the finished N x N matrix
(N = layers x heads, heads in layer-major order, ``i = layer * n_heads + head``): a 2-D MDS map
(Fig. 6), behaviour labels for colouring it, an average-linkage dendrogram, and a permutation
test of the Primer's question "do heads in the same layer behave alike?".
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import xlogy

from .labels import head_label
from .fidelity import declare, option_differs

#: The study names this module declares deviations for (see :mod:`bertology.fidelity`).
STUDIES = ("clark.clustering",)

_DISTANCES = "clarkkev/attention-analysis head_distances.py"
_FIG6 = "clarkkev/attention-analysis General_Analysis.ipynb (Clustering Attention Heads cell)"

#: Smoothing of attention rows before the JS divergence, as in the authors' ``head_distances.py``:
#: p -> (1 - eps) p + eps / n with eps = 1e-3 (n = number of keys of the input).
JS_SMOOTHING = 1e-3

#: How :class:`HeadDistances` reduces over query tokens: ``"sum"`` (the authors') or ``"mean"``
#: (ours: the sum divided by the number of query tokens, a pure rescaling).
REDUCES = ("sum", "mean")

declare("clark.clustering", "js_smoothing",
        "Attention rows are smoothed p -> (1 - {js_smoothing}) p + {js_smoothing}/n before the JS divergence; "
        "the authors smooth with 1e-3.", kind="option", when=option_differs("js_smoothing", JS_SMOOTHING),
        reference=_DISTANCES)
declare("clark.clustering", "js_mean",
        "Head distances are the JS divergence averaged over query tokens; the authors sum it over tokens. This "
        "only rescales the matrix (MDS map, clustering and permutation p-value are unchanged), and keeps values "
        "in [0, ln 2] whatever the corpus size.", kind="option", when=option_differs("reduce", "sum"),
        reference=_DISTANCES)
declare("clark.clustering", "behaviour_rule",
        "Fig. 6 behaviours by our relative rule: a share above {share} of attention to one target (largest wins), "
        "else 'broad' when the mean entropy is at least {broad} of uniform; the authors use fixed thresholds "
        "(next/previous > 0.5, entropy > 3.8 nats, [CLS]/[SEP]/punctuation > 0.6, later rules overriding).",
        kind="option", when=option_differs("rule", "clark"), reference=_FIG6)
declare("clark.clustering", "mds",
        "MDS: scikit-learn's metric SMACOF from a classical-MDS start (one run; 4 random starts before "
        "scikit-learn 1.8) with a fixed seed; the authors run it from 5 random starts with eps 1e-10 and at most "
        "1000 iterations, unseeded. The map is a display: no number here is read from it.", reference=_FIG6)

#: Memory budget of one pairwise block, in elements. On CPU a block that stays in cache (2**16
#: float32 = 256 KiB) was 2-3x faster than a large one; a GPU wants large blocks (few launches).
CHUNK_ELEMENTS = {"numpy": 1 << 16, "torch": 1 << 24}


def pairwise_js(attention: np.ndarray, *, smoothing: float = JS_SMOOTHING, chunk_elements: int | None = None,
                device=None, dtype: str = "float32") -> np.ndarray:
    """Sum over query units of JS(head i's row, head j's row) for one input: an N x N float64 array.

    ``attention`` is (layers, heads, T, K) or (N, T, K) with rows summing to 1. Each row is first
    smoothed p -> (1 - ``smoothing``) p + ``smoothing``/K, as the authors' ``head_distances.py``
    does (1e-3); ``smoothing=0`` gives the exact divergence. Uses
    JS(p, q) = ln 2 + (sum p ln p + sum q ln q)/2 - (sum s ln s)/2 with s = p + q, so each pair
    costs one log per (query, key) and the per-head terms are computed once. Pairs are done in
    blocks of at most max(``chunk_elements``, N) values (heads x heads x (query, key) cells), only
    for j >= the block's first head, so memory is bounded for any N and T. Only the upper triangle
    (i < j) of the return value is meaningful. Rounding below 0 is clipped to 0.

    On CPU (``device`` None or "cpu") this runs in numpy: torch's thread pool stalls on many small
    ops when the cores are busy (measured 10-100x slower on a loaded 2-core machine). Any other
    torch ``device`` (e.g. "cuda") runs the blocks there with torch.
    """
    att = np.asarray(attention)
    n, t = int(np.prod(att.shape[:-2])), att.shape[-2]
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if smoothing:
        att = (1 - smoothing) * att.astype(np.float64) + smoothing / att.shape[-1]
    flat = att.reshape(n, -1)  # (N, T*K): the sum runs over queries and keys alike
    f64 = flat.astype(np.float64)
    self_term = xlogy(f64, f64).sum(1)  # sum over queries of sum_k p ln p, per head
    if device is None or torch.device(device).type == "cpu":
        a, backend = flat.astype(dtype, copy=False), "numpy"
        out = np.zeros((n, n))
        tiny = np.finfo(dtype).tiny

        def s_log_s(s):  # sum of s ln s over the last axis; clamping makes 0 ln 0 = 0
            ls = np.maximum(s, tiny)
            np.log(ls, out=ls)
            ls *= s
            return ls.sum(-1)
    else:
        a, backend = torch.as_tensor(flat).to(device=device, dtype=getattr(torch, dtype)), "torch"
        out = torch.zeros(n, n, dtype=torch.float64, device=device)
        tiny = torch.finfo(a.dtype).tiny

        def s_log_s(s):
            return s.clamp_min(tiny).log_().mul_(s).sum(-1, dtype=torch.float64)

    budget = chunk_elements or CHUNK_ELEMENTS[backend]
    width = max(1, min(a.shape[1], budget // n))  # cells per block: one head against all N fits
    for c0 in range(0, a.shape[1], width):
        ac = a[:, c0:c0 + width]
        i0 = 0
        while i0 < n:  # later blocks pair with fewer heads, so they may hold more rows
            i1 = min(n, i0 + max(1, budget // ((n - i0) * ac.shape[1])))
            out[i0:i1, i0:] += s_log_s(ac[i0:i1, None] + ac[None, i0:])  # s: (c, n - i0, width)
            i0 = i1
    if backend == "torch":
        out = out.cpu().numpy()
    js = t * math.log(2) + 0.5 * (self_term[:, None] + self_term[None, :]) - 0.5 * out
    # JS >= 0; two nearly equal heads (e.g. ALBERT's shared layer at two depths) can come out a few
    # 1e-6 below 0 from float32 cancellation, which MDS would turn into NaN
    return np.maximum(js, 0.0)


def _symmetric(upper: np.ndarray) -> np.ndarray:
    u = np.triu(upper, 1)
    return u + u.T


@dataclass
class HeadDistanceResult:
    """JS divergence between every pair of heads, summed (``reduce="sum"``) or averaged
    (``"mean"``) over query tokens (symmetric, zero diagonal, nats)."""

    matrix: np.ndarray  # (N, N), N = n_layers * n_heads, layer-major
    n_layers: int
    n_heads: int
    n_queries: int  # query units summed / averaged over
    n_inputs: int
    reduce: str = "sum"

    @property
    def labels(self) -> list[str]:
        return [head_label(i // self.n_heads, i % self.n_heads) for i in range(len(self.matrix))]

    def table(self) -> pd.DataFrame:
        """Tidy: one row per unordered pair (i < j): ``layer_a, head_a, layer_b, head_b, value, n``."""
        i, j = np.triu_indices(len(self.matrix), 1)
        h = self.n_heads
        return pd.DataFrame({"layer_a": i // h, "head_a": i % h, "layer_b": j // h, "head_b": j % h,
                             "value": self.matrix[i, j], "n": self.n_queries})

    def frame(self) -> pd.DataFrame:
        """The matrix as a DataFrame indexed by ``layer-head`` labels."""
        return pd.DataFrame(self.matrix, index=self.labels, columns=self.labels)

    def mds(self, seed: int = 0) -> pd.DataFrame:
        """2-D MDS coordinates: ``layer, head, label, x, y``."""
        xy = mds_embedding(self.matrix, seed)
        idx = np.arange(len(self.matrix))
        return pd.DataFrame({"layer": idx // self.n_heads, "head": idx % self.n_heads,
                             "label": self.labels, "x": xy[:, 0], "y": xy[:, 1]})


class HeadDistances:
    """Reducer: JS divergence between all pairs of heads over every query token (§6).

    As the authors' ``head_distances.py``: for each input, every attention row of every head is
    smoothed (``smoothing``, default 1e-3), and JS(head i's row, head j's row) is summed over all
    query tokens, [CLS] and [SEP] included, and over inputs (longer inputs weigh more).
    ``reduce="mean"`` divides by the number of query tokens: only a rescaling (MDS map,
    clustering and permutation test are unchanged), which keeps values in [0, ln 2] and
    comparable across corpus sizes. Keeps one N x N running sum. ``device`` (e.g.
    ``loaded.device``) moves the pairwise work to a GPU when it is one, worth it for large N; on
    CPU it runs in numpy.
    """

    def __init__(self, n_layers: int, n_heads: int, *, reduce: str = "sum", smoothing: float = JS_SMOOTHING,
                 chunk_elements: int | None = None, device=None, dtype: str = "float32"):
        if reduce not in REDUCES:
            raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
        self.n_layers, self.n_heads = n_layers, n_heads
        self.reduce, self.smoothing = reduce, float(smoothing)
        n = n_layers * n_heads
        self.sums = np.zeros((n, n))
        self.n_queries = 0
        self.n_inputs = 0
        self.kw = dict(smoothing=smoothing, chunk_elements=chunk_elements, device=device, dtype=dtype)

    @property
    def options(self) -> dict:
        """The options of this reducer, for ``run.method("clark.clustering", **options)``."""
        return {"reduce": self.reduce, "js_smoothing": self.smoothing}

    def update(self, item) -> None:
        a = item.attention
        if a.shape[:2] != (self.n_layers, self.n_heads):
            raise ValueError(f"attention has {a.shape[:2]} layers x heads, expected {(self.n_layers, self.n_heads)}")
        self.sums += pairwise_js(a, **self.kw)
        self.n_queries += a.shape[-2]
        self.n_inputs += 1

    def result(self) -> HeadDistanceResult:
        if not self.n_queries:
            raise ValueError("HeadDistances saw no inputs")
        # float32 rounding can leave tiny negative values where two heads are identical
        d = np.clip(_symmetric(self.sums), 0.0, math.log(2) * self.n_queries)
        if self.reduce == "mean":
            d = d / self.n_queries
        return HeadDistanceResult(d, self.n_layers, self.n_heads, self.n_queries, self.n_inputs, self.reduce)


# ----------------------------------------------------------------------------- embedding, clustering


def mds_embedding(distance: np.ndarray, seed: int = 0, n_components: int = 2) -> np.ndarray:
    """Metric MDS of a precomputed distance matrix (scikit-learn SMACOF), deterministic for ``seed``."""
    from sklearn.manifold import MDS

    params = inspect.signature(MDS).parameters
    d = np.asarray(distance, dtype=np.float64)
    if "metric_mds" in params:  # scikit-learn >= 1.8 renamed the options
        mds = MDS(n_components, metric="precomputed", metric_mds=True, init="classical_mds",
                  random_state=seed, n_init=1, normalized_stress="auto")
    else:
        mds = MDS(n_components, dissimilarity="precomputed", metric=True, n_init=4, random_state=seed,
                  normalized_stress="auto")
    try:
        xy = mds.fit_transform(d)
    except ValueError:  # a degenerate matrix (all heads nearly alike) can make the classical start NaN
        xy = None
    if xy is None or not np.isfinite(xy).all():
        mds.set_params(init="random") if "metric_mds" in params else None
        xy = mds.fit_transform(d)
    return xy


def head_linkage(distance: np.ndarray, labels: list[str], method: str = "average"):
    """Hierarchical clustering (scipy ``linkage``) of the heads: ``(Z, labels)`` for a dendrogram."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = np.asarray(distance, dtype=np.float64)
    z = linkage(squareform(_symmetric(d), checks=False), method=method)
    return z, list(labels)


# ----------------------------------------------------------------------------- behaviours

#: Behaviour -> metric of :class:`~bertology.attention.AttentionPatterns` it is read from.
BEHAVIOUR_METRICS = {"[CLS]": "to_cls", "[SEP]": "to_sep", "punctuation": "to_punct",
                     "previous token": "to_prev", "next token": "to_next"}

#: The authors' Fig. 6 rules, in the order of their plotting cell (a later rule that holds
#: overrides an earlier one): ``(behaviour, metric, threshold)``, each "metric > threshold".
#: Provenance: clarkkev/attention-analysis General_Analysis.ipynb, cell "Clustering Attention
#: Heads" (POSITION_THRESHOLD = 0.5, ENTROPY_THRESHOLD = 3.8, SPECIAL_TOKEN_THRESHOLD = 0.6).
CLARK_BEHAVIOUR_RULES = (
    ("next token", "to_next", 0.5),
    ("previous token", "to_prev", 0.5),
    ("broad", "entropy", 3.8),
    ("[CLS]", "to_cls", 0.6),
    ("[SEP]", "to_sep", 0.6),
    ("punctuation", "to_punct", 0.6),
)

#: Rules of :func:`head_behaviours`: ``"clark"`` (the authors') or ``"relative"`` (ours).
BEHAVIOUR_RULES = ("clark", "relative")


def head_behaviours(patterns: pd.DataFrame, extra: dict | None = None, rule: str = "clark", share: float = 0.5,
                    broad: float = 0.8) -> pd.DataFrame:
    """Label each head with its surface behaviour, to colour Fig. 6.

    ``rule="clark"`` (default) applies the authors' thresholds of :data:`CLARK_BEHAVIOUR_RULES`
    in their order, a later rule that holds overriding an earlier one: next / previous token
    > 0.5, broad when the mean entropy > 3.8 nats, [CLS] / [SEP] / punctuation > 0.6; a head no
    rule picks is "other". The entropy threshold is absolute: on inputs much shorter than the
    authors' segments of up to 128 pieces, few heads can reach it.

    ``rule="relative"`` (ours): a head is "[CLS]" / "[SEP]" / "punctuation" / "previous token" /
    "next token" when more than ``share`` of its average attention goes there (the largest such
    share wins); otherwise "broad" when its mean entropy is at least ``broad`` times that of
    uniform attention over the same inputs; otherwise "other".

    ``extra`` maps heads to labels that override these (e.g. syntactic heads from notebook 02, as
    the authors' linguistic heads do): keys are ``(layer, head)`` 0-indexed or ``"layer-head"``
    strings 1-indexed. Returns ``layer, head, behaviour``.
    """
    if rule not in BEHAVIOUR_RULES:
        raise ValueError(f"rule must be one of {BEHAVIOUR_RULES}, got {rule!r}")
    wide = patterns.pivot_table(index=["layer", "head"], columns="metric", values="value")
    if rule == "clark":
        label = pd.Series("other", index=wide.index, dtype=object)
        for name, metric, threshold in CLARK_BEHAVIOUR_RULES:
            label[wide[metric] > threshold] = name
    else:
        shares = wide[list(BEHAVIOUR_METRICS.values())].set_axis(list(BEHAVIOUR_METRICS), axis=1)
        label = shares.idxmax(axis=1).where(shares.max(axis=1) > share)
        is_broad = wide["entropy"] >= broad * wide["uniform_entropy"]
        label = label.fillna(pd.Series(np.where(is_broad, "broad", "other"), index=wide.index))
    for key, name in (extra or {}).items():
        if isinstance(key, str):
            layer, head = (int(x) - 1 for x in key.split("-"))
            key = (layer, head)
        if key not in label.index:
            raise KeyError(f"head {key} is not in the patterns table")
        label[key] = name
    return label.rename("behaviour").reset_index()


# ----------------------------------------------------------------------------- same layer, alike?


def _layers(distance: np.ndarray, n_heads: int) -> np.ndarray:
    n = len(distance)
    if n % n_heads:
        raise ValueError(f"{n} heads is not a whole number of layers of {n_heads}")
    return np.repeat(np.arange(n // n_heads), n_heads)


def layer_block_means(distance: np.ndarray, n_heads: int) -> pd.DataFrame:
    """Mean distance between the heads of layer a and of layer b (a == b: distinct pairs only):
    ``layer_a, layer_b, value``."""
    d = np.asarray(distance, dtype=np.float64)
    lay = _layers(d, n_heads)
    L = lay[-1] + 1
    blocks = d.reshape(L, n_heads, L, n_heads).sum((1, 3))
    pairs = np.full((L, L), float(n_heads * n_heads))
    np.fill_diagonal(pairs, n_heads * (n_heads - 1))  # the zero diagonal is not a pair
    a, b = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    with np.errstate(invalid="ignore", divide="ignore"):
        means = blocks / pairs
    return pd.DataFrame({"layer_a": a.ravel(), "layer_b": b.ravel(), "value": means.ravel()})


def layer_similarity(distance: np.ndarray, n_heads: int, n_permutations: int = 1000, seed: int = 0) -> dict:
    """Are heads of the same layer closer to each other than to heads of other layers?

    Statistic: mean between-layer minus mean within-layer distance over distinct head pairs.
    Null: layer labels permuted over heads (layer sizes kept), ``n_permutations`` draws with
    ``seed``. One-sided p = (1 + #{null >= observed}) / (1 + n_permutations), so it is never 0.
    """
    d = _symmetric(np.asarray(distance, dtype=np.float64))
    lay = _layers(d, n_heads)
    n = len(d)
    n_within = int(sum(np.bincount(lay) * (np.bincount(lay) - 1)))  # ordered pairs
    n_between = n * (n - 1) - n_within
    if not n_within or not n_between:
        raise ValueError("need at least two layers with two heads each")
    total = d.sum()

    def stat(labels: np.ndarray) -> np.ndarray:  # labels: (P, N) -> (P,) between - within
        within = np.einsum("ij,pij->p", d, labels[:, :, None] == labels[:, None, :])
        return (total - within) / n_between - within / n_within

    observed = float(stat(lay[None])[0])
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    step = max(1, (1 << 22) // (n * n))  # bound the (P, N, N) mask
    for p0 in range(0, n_permutations, step):
        k = min(step, n_permutations - p0)
        null[p0:p0 + k] = stat(np.stack([rng.permutation(lay) for _ in range(k)]))
    # a tolerance so that exact ties (e.g. all-equal distances) are not lost to rounding
    tol = 1e-12 * max(1.0, abs(observed))
    within = d[lay[:, None] == lay[None, :]].sum() / n_within
    return {
        "within_mean": float(within),
        "between_mean": float((total - within * n_within) / n_between),
        "difference": observed,
        "null_mean": float(null.mean()) if n_permutations else math.nan,
        "null_sd": float(null.std()) if n_permutations else math.nan,
        "p_value": float((1 + np.sum(null >= observed - tol)) / (1 + n_permutations)),
        "n_permutations": n_permutations,
        "n_heads": n,
    }


#: Permutation p-value below which "what this run shows" says heads of a layer are more alike.
ALIKE_P = 0.05


def findings_text(same_layer: dict, behaviour: pd.DataFrame, distances: pd.DataFrame, reduce: str = "mean") -> list[str]:
    """Markdown lines of notebook 03's "what this run shows": the same-layer test (``same_layer`` from
    :func:`layer_similarity`; alike when ``p < ALIKE_P``), how many heads show each behaviour
    (``behaviour`` from :func:`head_behaviours`, most frequent first) and the closest pair of heads
    (``distances``: :meth:`HeadDistanceResult.table`); ``reduce`` says whether the distances are
    averaged (``"mean"``) or summed over tokens."""
    verdict = ("more alike than heads of different layers" if same_layer["p_value"] < ALIKE_P
               else "not detectably more alike than heads of different layers")
    counts = behaviour["behaviour"].value_counts()
    closest = distances.nsmallest(1, "value").iloc[0]
    return [
        f"Heads in the same layer are **{verdict}**: {'mean' if reduce == 'mean' else 'summed'} JS distance "
        f"{same_layer['within_mean']:.3f} nats within layers vs {same_layer['between_mean']:.3f} between "
        f"(permutation p = {same_layer['p_value']:.3g}, {same_layer['n_permutations']} permutations).",
        "Behaviours: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
        f"Closest pair of heads: {head_label(int(closest.layer_a), int(closest.head_a))} and "
        f"{head_label(int(closest.layer_b), int(closest.head_b))} (JS {closest.value:.3f} nats).",
    ]


def key_numbers(same_layer: dict) -> dict[str, float]:
    """Headline numbers of notebook 03 for the index, from :func:`layer_similarity`."""
    return {"JS distance within layers (nats)": same_layer["within_mean"],
            "JS distance between layers (nats)": same_layer["between_mean"],
            "same-layer permutation p-value": same_layer["p_value"]}


def reference_text() -> str:
    """What Clark et al. report on head clustering, for the "what this run shows" cell."""
    return ("**Clark et al. (2019) on BERT-base, for reference (different model and data):** heads with the same "
            "behaviour form clusters in the MDS plot (§6, Fig. 6), and heads within the same layer are often close to each other, "
            "so they tend to have similar attention distributions.")
