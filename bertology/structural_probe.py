"""Structural probes: is the parse tree a linear map away from the word vectors? (Hewitt & Manning 2019)

Hewitt & Manning (2019, NAACL, §2) look for one linear map ``B`` (``rank x D``) per layer such that

    distance probe:  ‖B(hᵢ − hⱼ)‖²  ≈  d_T(wᵢ, wⱼ)   (path length between two words in the parse tree)
    depth probe:     ‖B hᵢ‖²        ≈  ‖wᵢ‖_T        (number of arcs from the word up to the root)

and read syntax off the fitted geometry (§3–4): the minimum spanning tree of the predicted
distances against the gold tree (UUAS, undirected, punctuation excluded), Spearman correlation
of predicted and gold distances (DSpr.) and depths (NSpr.), each first averaged over all
sentences of one length and then over the lengths 5–50, and how often the shallowest predicted
word is the gold root (root%).

**Conventions (read beside the authors' code, github.com/john-hewitt/structural-probes).**

- Layers: ``0`` = the embedding output (non-contextual: word + position + segment embeddings),
  ``1..L`` = the transformer layers' outputs, exactly :class:`bertology.extract.Item`'s ``hidden``.
  Hewitt & Manning's ``scripts/convert_raw_to_bert.py`` stores only the transformer layers'
  outputs (``encoded_layers`` of ``pytorch_pretrained_bert``, 12 for BERT-base) and ``model_layer``
  indexes them from 0 (their README: "BERT-base models have layers 0 through 11"), so their
  index ``k`` is our layer ``k + 1`` and their "BERTbase7" is layer 8 here. They have no
  embedding-layer probe for BERT.
- Word vectors: the **mean** of a word's word pieces, as their BERT data loader does
  (``np.mean`` over the pieces of each PTB token in ``data.py``); special tokens are left out.
- Training, as their ``regimen.py``, ``loss.py``, ``probe.py`` and ``example/config/naacl19/*.yaml``:
  maximum rank = the model's hidden size (``maximum_rank: 768`` / ``1024``; a smaller rank is
  our option), ``B`` initialised uniform in ±0.05; L1 loss, per sentence divided by ``n²``
  (distances) or ``n`` (depths), then averaged over the sentences of the batch; batches of 20
  sentences drawn in a fresh random order every epoch (``DataLoader(shuffle=True)``); Adam at
  1e-3 with ``ReduceLROnPlateau(factor=0.1, patience=0)`` on the development loss (the learning
  rate is cut tenfold after every epoch whose dev loss is not 1e-4 *relatively* below the best so
  far, down to 1e-8); at most 40 epochs; the parameters are saved whenever the dev loss improves
  by more than 1e-4 (absolute) and training stops once 5 epochs passed without such an
  improvement. All layers are fitted *at once* as one ``(layers, rank, D)`` tensor: their losses
  are summed but share no parameters, and each layer has its own learning-rate schedule and
  early stop, so each layer's probe is what a separate fit with the same seed and batch order
  would give.
- UUAS, as their ``reporter.py``: the gold tree *and* the predicted tree are both minimum
  spanning trees over the non-punctuation words (of the gold and of the predicted distances),
  so every sentence contributes ``(non-punctuation words − 1)`` gold edges, also when a
  punctuation word sat between two words in the gold tree. ``uuas_gold="arcs"`` (ours) counts
  only the gold arcs joining two non-punctuation words instead. root% takes the shallowest
  non-punctuation word; DSpr./NSpr. keep every word, as in their reporter.
- Punctuation = UPOS ``PUNCT``; Hewitt & Manning exclude the PTB tags ``'' , . : `` -LRB- -RRB-``
  (declared below: our sentences carry no XPOS).
"""
from __future__ import annotations

import functools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .data import Sentence
from .extract import encode_inputs, states
from .fidelity import declare, option_differs
from .interventions import layer_stack, skipped_layers
from .models import LoadedModel, UnsupportedModelError, check_precision
from .profiling import timed

STUDIES = ("hewitt_manning.probe",)
_HM = "john-hewitt/structural-probes"

#: The authors' training settings (their ``regimen.py`` and ``example/config/naacl19/*.yaml``).
AUTHORS = {"max_epochs": 40, "patience": 5, "lr": 1e-3, "batch_size": 20, "batching": "shuffled",
           "uuas_gold": "mst"}
BATCHINGS = ("shuffled", "length")
UUAS_GOLD = ("mst", "arcs")

declare("hewitt_manning.probe", "ud",
        "Universal Dependencies trees (UD relations, UD tokenisation) instead of the Penn Treebank WSJ "
        "converted to Stanford Dependencies.", kind="data",
        reference=f"{_HM} example/config/naacl19/bert-base/*.yaml (ptb-wsj-sd corpus)")
declare("hewitt_manning.probe", "punct_upos",
        "Punctuation excluded from UUAS and root% is UPOS PUNCT (e.g. also HYPH and NFP tokens); Hewitt & "
        "Manning exclude the PTB tags '' , . : `` -LRB- -RRB- (our sentences carry no XPOS).",
        reference=f"{_HM} structural-probes/reporter.py (prims_matrix_to_edges, get_nopunct_argmin)")
declare("hewitt_manning.probe", "segment_ids",
        "The model sees token_type_ids 0 (the tokenizer's default); the authors' feature script fed "
        "segment id 1 to every token.", reference=f"{_HM} scripts/convert_raw_to_bert.py")
declare("hewitt_manning.probe", "rank",
        "Probe maximum rank {probe_rank} (Hewitt & Manning: the model's hidden size, {hidden_size}).",
        kind="option", when=lambda o: "probe_rank" in o and o["probe_rank"] not in (None, o.get("hidden_size")),
        reference=f"{_HM} example/config/naacl19/bert-base/*.yaml (maximum_rank: 768)")
declare("hewitt_manning.probe", "max_epochs", "At most {max_epochs} epochs (Hewitt & Manning: 40).",
        kind="option", when=option_differs("max_epochs", 40),
        reference=f"{_HM} example/config/naacl19/bert-base/*.yaml (probe_training.epochs: 40)")
declare("hewitt_manning.probe", "patience",
        "Early stop after {patience} epochs without dev improvement (Hewitt & Manning: 5).",
        kind="option", when=option_differs("patience", 5), reference=f"{_HM} structural-probes/regimen.py")
declare("hewitt_manning.probe", "lr", "Adam learning rate {lr} (Hewitt & Manning: 0.001).",
        kind="option", when=option_differs("lr", 1e-3), reference=f"{_HM} structural-probes/regimen.py")
declare("hewitt_manning.probe", "batching",
        "Training batches of sentences of similar length, in a shuffled order (ours, less padding); Hewitt & "
        "Manning draw batches of 20 random sentences every epoch.", kind="option",
        when=option_differs("batching", "shuffled"), reference=f"{_HM} structural-probes/data.py (DataLoader shuffle=True)")
declare("hewitt_manning.probe", "uuas_gold",
        "UUAS counts the gold arcs between two non-punctuation words (ours); Hewitt & Manning compare with "
        "the minimum spanning tree of the gold distances over the non-punctuation words.", kind="option",
        when=option_differs("uuas_gold", "mst"), reference=f"{_HM} structural-probes/reporter.py (report_uuas_and_tikz)")

KINDS = ("distance", "depth")
METRICS = {"distance": ("uuas", "dspr"), "depth": ("root_acc", "nspr")}
METRIC_LABELS = {"uuas": "UUAS", "dspr": "DSpr. (5–50)", "root_acc": "root %", "nspr": "NSpr. (5–50)"}

#: Reference values (PTB WSJ, Stanford Dependencies; **reference, not target** — other model,
#: data and annotation scheme). Only numbers we could find and check are listed:
#: - ``clark2019_table3``: Clark et al. (2019), Table 3 lists the structural probe on BERT-base at
#:   80 UUAS (same source as :data:`bertology.parser_probe.CLARK_TABLE3`).
#: - ``hm2019_rank_plot``: the data behind Hewitt & Manning's UUAS / DSpr.-by-maximum-rank plot
#:   for BERTbase7, left as a commented-out list in the authors' plotting script
#:   ``scripts/codalab/make_emnlp19_pos_graph.py`` of github.com/john-hewitt/control-tasks
#:   (commit 29a06829); ranks 1, 2, 4, ..., 512. Not checked against the published figure.
#: Hewitt & Manning's Table 1 values (BERT-base and BERT-large, root% and NSpr.) could not be
#: found in a source we could read, so they are not printed.
REFERENCE = pd.DataFrame(
    [("BERT-base (H&M layer 7)", "uuas", None, 0.80, "Clark et al. 2019, Table 3 (PTB, WSJ)")]
    + [("BERT-base (H&M layer 7)", "uuas", r, v, "H&M 2019 rank plot data (john-hewitt/control-tasks)")
       for r, v in zip([2 ** j for j in range(10)],
                       [0.266, 0.389, 0.509, 0.659, 0.742, 0.780, 0.795, 0.799, 0.797, 0.797])]
    + [("BERT-base (H&M layer 7)", "dspr", r, v, "H&M 2019 rank plot data (john-hewitt/control-tasks)")
       for r, v in zip([2 ** j for j in range(10)], [0.55, 0.63, 0.71, 0.77, 0.81, 0.83, 0.84, 0.85, 0.85, 0.85])],
    columns=["model", "metric", "rank", "value", "source"],
)


# ----------------------------------------------------------------------------- trees


def _check_heads(heads: Sequence[int]) -> np.ndarray:
    h = np.asarray(heads, dtype=np.int64)
    n = len(h)
    if n == 0:
        raise ValueError("empty tree: no words")
    if (h < 0).any() or (h > n).any():
        raise ValueError(f"head indices must be 0 (root) or 1..{n}, got {h.tolist()}")
    if (h == 0).sum() != 1:
        raise ValueError(f"a tree needs exactly one root (head 0), got {(h == 0).sum()}: {h.tolist()}")
    return h


def tree_depths(heads: Sequence[int]) -> np.ndarray:
    """Depth of every word: arcs from the word up to the root word (the root word has depth 0).

    ``heads`` in CoNLL-U numbering (1-based, 0 = root). Raises on cycles.
    """
    return _tree(_key(heads))[0].copy()


def tree_distances(heads: Sequence[int]) -> np.ndarray:
    """``(n, n)`` path lengths between all pairs of words in the (undirected) tree."""
    return _tree(_key(heads))[1].copy()


def _key(heads: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(h) for h in heads)


@functools.lru_cache(maxsize=1 << 14)
def _tree(heads: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(depths, distances) of one tree, read-only, computed once per distinct tree in a process:
    fitting and scoring ask for the same gold trees at every layer, rank and epoch (on notebook 04,
    MiniLM, 2026-12-07: 31,500 shortest-path calls, 26 s of the perturbation study's 69 s)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    h = _check_heads(heads)
    n = len(h)
    depth = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        path, j = [], i
        while depth[j] < 0 and h[j] != 0:
            path.append(j)
            j = h[j] - 1
            if len(path) > n:
                raise ValueError(f"heads contain a cycle: {h.tolist()}")
        base = 0 if h[j] == 0 and depth[j] < 0 else depth[j]
        depth[j] = base
        for k, node in enumerate(reversed(path), start=1):
            depth[node] = base + k
    dep = np.flatnonzero(h > 0)
    adj = coo_matrix((np.ones(len(dep)), (dep, h[dep] - 1)), shape=(n, n)).tocsr()
    dist = shortest_path(adj, directed=False, unweighted=True).astype(np.int64)
    depth.setflags(write=False)
    dist.setflags(write=False)
    return depth, dist


@functools.lru_cache(maxsize=1 << 14)
def _centered_ranks(heads: tuple[int, ...], kind: str) -> np.ndarray:
    """Rows of gold distances (``kind="distance"``) or the gold depths (``(1, n)``) as average
    ranks minus their row mean, for :func:`_row_spearman` (the same for every layer's predictions)."""
    depth, dist = _tree(heads)
    r = _centered(_rank_rows(dist if kind == "distance" else depth[None]))
    r.setflags(write=False)
    return r


def mst_edges(dist: np.ndarray) -> set[tuple[int, int]]:
    """Undirected minimum spanning tree of a symmetric distance matrix (Prim; ties → lower index).

    Returns edges ``(i, j)`` with ``i < j``, 0-based.
    """
    d = np.asarray(dist, dtype=np.float64)
    n = d.shape[0]
    if d.shape != (n, n):
        raise ValueError(f"distance matrix must be square, got shape {d.shape}")
    if n < 2:
        return set()
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = d[0].copy()
    parent = np.zeros(n, dtype=np.int64)
    edges = set()
    for _ in range(n - 1):
        cand = np.where(in_tree, np.inf, best)
        j = int(np.argmin(cand))
        edges.add((min(j, int(parent[j])), max(j, int(parent[j]))))
        in_tree[j] = True
        closer = d[j] < best
        best = np.where(closer, d[j], best)
        parent = np.where(closer, j, parent)
    return edges


def _punct_mask(s: Sentence) -> np.ndarray:
    return np.array([u == "PUNCT" for u in s.upos], dtype=bool)


def _check_uuas_gold(uuas_gold: str) -> None:
    if uuas_gold not in UUAS_GOLD:
        raise ValueError(f"uuas_gold must be one of {UUAS_GOLD}, not {uuas_gold!r}")


def gold_edges(s: Sentence, uuas_gold: str = "mst") -> set[tuple[int, int]]:
    """The gold undirected edges UUAS is scored against, 0-based ``(i, j)`` with ``i < j``.

    ``"mst"`` (Hewitt & Manning's ``reporter.py``): the minimum spanning tree of the gold tree
    distances over the non-punctuation words — the gold arcs between them, plus, where a
    punctuation word joined two parts of the tree, the shortest links that reconnect them.
    ``"arcs"`` (ours): only the gold arcs whose two ends are non-punctuation words.
    """
    _check_uuas_gold(uuas_gold)
    return set(_gold_edges(_key(s.heads), tuple(_punct_mask(s).tolist()), uuas_gold))


@functools.lru_cache(maxsize=1 << 14)
def _gold_edges(heads: tuple[int, ...], punct: tuple[bool, ...], uuas_gold: str) -> frozenset:
    keep = np.flatnonzero(~np.asarray(punct, dtype=bool))
    if uuas_gold == "arcs":
        kept = set(keep.tolist())
        return frozenset((min(i, h - 1), max(i, h - 1)) for i, h in enumerate(heads)
                         if h > 0 and i in kept and (h - 1) in kept)
    if len(keep) < 2:
        return frozenset()
    sub = _tree(heads)[1][np.ix_(keep, keep)]
    return frozenset((int(keep[a]), int(keep[b])) for a, b in mst_edges(sub))


def uuas_counts(pred: np.ndarray, s: Sentence, uuas_gold: str = "mst") -> tuple[int, int]:
    """(correct, total) undirected edges of one sentence, punctuation excluded (see :func:`gold_edges`)."""
    gold = gold_edges(s, uuas_gold)
    keep = np.flatnonzero(~_punct_mask(s))
    if len(keep) < 2:
        return 0, len(gold)
    sub = np.asarray(pred)[np.ix_(keep, keep)]
    predicted = {(int(keep[a]), int(keep[b])) for a, b in mst_edges(sub)}
    return len(gold & predicted), len(gold)


def uuas(pred_distances: Sequence[np.ndarray], sentences: Sequence[Sentence], uuas_gold: str = "mst") -> dict:
    """UUAS over a corpus (§4): correct / total gold edges over the non-punctuation words, summed
    over sentences (see :func:`gold_edges` for ``uuas_gold``)."""
    _same_length(pred_distances, sentences)
    _check_uuas_gold(uuas_gold)
    c = t = 0
    for p, s in zip(pred_distances, sentences):
        a, b = uuas_counts(p, s, uuas_gold)
        c, t = c + a, t + b
    return {"value": c / t if t else float("nan"), "correct": c, "total": t}


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean of their positions) along the last axis of a 2-D
    array: ``scipy.stats.rankdata(x, axis=-1)`` without its per-call cost (two calls per sentence
    and layer made it 16 s of notebook 04's perturbation study, MiniLM, 2026-12-07)."""
    x = np.atleast_2d(np.asarray(x))
    rows, n = x.shape
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, -1)
    new = np.ones(x.shape, dtype=bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    group = np.cumsum(new, axis=-1) - 1 + (np.arange(rows) * n)[:, None]  # tie group, unique over rows
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), x.shape)
    mean = np.bincount(group.ravel(), pos.ravel(), rows * n) / np.maximum(np.bincount(group.ravel(), minlength=rows * n), 1)
    out = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(out, order, mean[group], -1)
    return out


def _centered(r: np.ndarray) -> np.ndarray:
    return r - r.mean(-1, keepdims=True)


def _row_spearman(pred: np.ndarray, gold: np.ndarray, gold_centered: np.ndarray | None = None) -> np.ndarray:
    """Spearman correlation of each row of ``pred`` with the same row of ``gold`` (NaN if constant);
    ``gold_centered``: ``gold``'s centred ranks when already known."""
    rp = _centered(_rank_rows(np.atleast_2d(pred)))
    rg = _centered(_rank_rows(np.atleast_2d(gold))) if gold_centered is None else gold_centered
    den = np.sqrt((rp ** 2).sum(-1) * (rg ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * rg).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _length_average(values_by_length: dict[int, list[float]], min_len: int, max_len: int) -> tuple[float, pd.DataFrame]:
    rows = [(n, float(np.nanmean(v)), int(np.isfinite(v).sum())) for n, v in sorted(values_by_length.items())
            if len(v) and np.isfinite(v).any()]
    table = pd.DataFrame(rows, columns=["length", "value", "n"])
    sel = table[(table.length >= min_len) & (table.length <= max_len)]
    return (float(sel.value.mean()) if len(sel) else float("nan")), table


def distance_spearman(pred_distances: Sequence[np.ndarray], sentences: Sequence[Sentence],
                      min_len: int = 5, max_len: int = 50) -> tuple[float, pd.DataFrame]:
    """DSpr. (§4): for each word, Spearman between its row of predicted and of gold distances
    (all words of the sentence, itself included, as in H&M's reporter); averaged over all words of
    all sentences of one length, then over lengths ``min_len..max_len``. Returns the macro average
    and the per-length table."""
    _same_length(pred_distances, sentences)
    by_len: dict[int, list[float]] = {}
    for p, s in zip(pred_distances, sentences):
        if s.n < 2:
            continue
        key = _key(s.heads)
        by_len.setdefault(s.n, []).extend(
            _row_spearman(np.asarray(p), _tree(key)[1], _centered_ranks(key, "distance")).tolist())
    return _length_average(by_len, min_len, max_len)


def root_accuracy(pred_depths: Sequence[np.ndarray], sentences: Sequence[Sentence]) -> dict:
    """root% (§4): share of sentences whose shallowest predicted non-punctuation word is the gold root."""
    _same_length(pred_depths, sentences)
    hit = tot = 0
    for p, s in zip(pred_depths, sentences):
        keep = np.flatnonzero(~_punct_mask(s))
        if len(keep) == 0:
            continue
        guess = keep[int(np.argmin(np.asarray(p)[keep]))]
        hit += int(s.heads[guess] == 0)
        tot += 1
    return {"value": hit / tot if tot else float("nan"), "correct": hit, "total": tot}


def norm_spearman(pred_depths: Sequence[np.ndarray], sentences: Sequence[Sentence],
                  min_len: int = 5, max_len: int = 50) -> tuple[float, pd.DataFrame]:
    """NSpr. (§4): per sentence, Spearman between predicted and gold depths of all its words;
    averaged per sentence length, then over lengths ``min_len..max_len``."""
    _same_length(pred_depths, sentences)
    by_len: dict[int, list[float]] = {}
    for p, s in zip(pred_depths, sentences):
        if s.n < 2:
            continue
        key = _key(s.heads)
        by_len.setdefault(s.n, []).append(
            float(_row_spearman(np.asarray(p)[None], _tree(key)[0][None], _centered_ranks(key, "depth"))[0]))
    return _length_average(by_len, min_len, max_len)


def _same_length(pred, sentences):
    if len(pred) != len(sentences):
        raise ValueError(f"{len(pred)} predictions for {len(sentences)} sentences")
    for k, (p, s) in enumerate(zip(pred, sentences)):
        if np.asarray(p).shape[0] != s.n:
            raise ValueError(f"sentence {k} has {s.n} words but its prediction has {np.asarray(p).shape[0]}")


# ----------------------------------------------------------------------------- word states


@dataclass
class WordStates:
    """Word-level hidden states of a list of sentences, every layer, in one flat float32 array.

    ``states[l, offsets[k]:offsets[k+1]]`` are the vectors of sentence ``k``'s words at layer ``l``
    (0 = embeddings). Sentences that did not fit into the model's maximum length are left out
    (``dropped`` counts them) so every kept sentence has a vector for every gold word.
    """

    states: np.ndarray  # (layers + 1, words, D)
    offsets: np.ndarray  # (sentences + 1,)
    sentences: list[Sentence]
    dropped: int = 0
    seconds: float = 0.0

    @property
    def n_layers(self) -> int:
        return self.states.shape[0]

    def sentence(self, k: int, layer: int | None = None) -> np.ndarray:
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.states[:, a:b] if layer is None else self.states[layer, a:b]

    def __len__(self) -> int:
        return len(self.sentences)

    def subset(self, rows: Sequence[int]) -> "WordStates":
        """The sentences ``rows`` (in that order), with their states copied."""
        rows = list(rows)
        parts = [self.sentence(k) for k in rows]
        states = np.concatenate(parts, 1) if parts else self.states[:, :0]
        offsets = np.concatenate([[0], np.cumsum([self.sentences[k].n for k in rows])]).astype(np.int64)
        return WordStates(states, offsets, [self.sentences[k] for k in rows])


def word_states(loaded: LoadedModel, sentences: Sequence[Sentence], *, batch_size: int = 32,
                cache_dir=None, progress: bool = True, desc: str = "states", top: int | None = None) -> WordStates:
    """Mean-pooled word vectors of every layer for ``sentences`` (one batched, length-bucketed pass).

    ``top``: only the layers 0..``top`` (0 = embeddings) are wanted; the model then runs its first
    ``top`` transformer layers only (at least one; :func:`bertology.interventions.skipped_layers`
    leaves out the rest, which cannot change the layers below them), and ``states`` holds those
    ``top + 1`` layers.
    A model whose layers cannot be left out (ALBERT) runs them all."""
    if not sentences:
        raise ValueError("no sentences to extract word states from")
    n = loaded.info.n_layers
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 0 <= top <= n):
        raise ValueError(f"top must be a layer in 0..{n} (0 = embeddings) or None, got {top!r}")
    cut = nullcontext()
    if top is not None and top < n:
        try:
            layer_stack(loaded.model)
            # at least one layer runs: without any, the model reports no hidden states at all
            cut = skipped_layers(loaded, range(max(int(top), 1), n))
        except UnsupportedModelError:
            pass
    t0 = time.perf_counter()
    encs = encode_inputs(loaded.tokenizer, [s.words for s in sentences], loaded.info.max_length)
    keep = [k for k, e in enumerate(encs) if not e.truncated]
    kept = [sentences[k] for k in keep]
    offsets = np.concatenate([[0], np.cumsum([s.n for s in kept])]).astype(np.int64)
    with cut:
        flat = states(loaded, [encs[k] for k in keep], layers=None if top is None else list(range(int(top) + 1)),
                      pool="mean", unit="word", concat=True, batch_size=batch_size, cache=cache_dir,
                      progress=progress, desc=desc)
    return WordStates(flat, offsets, kept, len(sentences) - len(kept), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- probes


def _targets(s: Sentence, kind: str) -> np.ndarray:
    depth, dist = _tree(_key(s.heads))  # read-only, shared
    return dist if kind == "distance" else depth


@dataclass
class _Part:
    """Sentences of a batch padded together: words ``start:stop`` of the batch's packed words."""

    start: int
    stop: int
    slots: torch.Tensor  # (stop - start,) where each of those words sits in the padded (B * n) grid
    target: torch.Tensor  # (B, n, n) or (B, n), -1 = padding
    lengths: torch.Tensor  # (B,)


@dataclass
class _Batch:
    rows: torch.Tensor  # (W,) the batch's words as rows of the flat states, sentence after sentence
    parts: list  # of _Part: sentences of similar length, padded together
    n: int  # sentences


#: Sentences padded together inside a batch (for the n x n distances; the batch itself is whatever
#: the batching made it, e.g. 20 random sentences). The loss is a sum over sentences, so how a
#: batch is cut into parts changes only the padding, never the numbers.
PART_SIZE = 5


def _layout(ws: WordStates, ks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows in the flat states and slots in the padded (len(ks) * n) grid of sentences ``ks``'s words."""
    n = max(ws.sentences[k].n for k in ks)
    rows = [np.arange(ws.offsets[k], ws.offsets[k] + ws.sentences[k].n) for k in ks]
    slots = [np.arange(b * n, b * n + ws.sentences[k].n) for b, k in enumerate(ks)]
    return torch.as_tensor(np.concatenate(rows)), torch.as_tensor(np.concatenate(slots)), n


def _assemble(ws: WordStates, targets: Sequence[np.ndarray], ks: Sequence[int], kind: str,
              part_size: int = PART_SIZE) -> _Batch:
    """Batch of sentences ``ks``: their words packed by length, cut into parts of ``part_size``."""
    ks = sorted(ks, key=lambda k: (ws.sentences[k].n, k))
    rows, _, _ = _layout(ws, ks)
    parts, start = [], 0
    for a in range(0, len(ks), part_size):
        group = ks[a:a + part_size]
        _, slots, n = _layout(ws, group)
        tgt = torch.full((len(group), n, n) if kind == "distance" else (len(group), n), -1.0)
        for b, k in enumerate(group):
            m = ws.sentences[k].n
            t = torch.tensor(targets[k], dtype=torch.float32)  # a copy: the cached trees are read-only
            if kind == "distance":
                tgt[b, :m, :m] = t
            else:
                tgt[b, :m] = t
        stop = start + len(slots)
        parts.append(_Part(start, stop, slots, tgt, torch.tensor([ws.sentences[k].n for k in group],
                                                                   dtype=torch.float32)))
        start = stop
    return _Batch(rows, parts, len(ks))


def _make_batches(ws: WordStates, kind: str, batch_size: int, order: Sequence[int] | None = None,
                  targets: Sequence[np.ndarray] | None = None) -> list[_Batch]:
    """Consecutive batches of ``batch_size`` sentences in ``order`` (default: by length)."""
    if order is None:
        order = sorted(range(len(ws)), key=lambda k: (ws.sentences[k].n, k))
    if targets is None:
        targets = [_targets(s, kind) for s in ws.sentences]
    order = list(order)
    return [_assemble(ws, targets, order[a:a + batch_size], kind) for a in range(0, len(order), batch_size)]


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch of Hewitt & Manning's batching: the ``n`` sentences in a fresh random order, cut
    into consecutive batches of ``batch_size`` (the last one may be smaller)."""
    order = rng.permutation(n).tolist()
    return [order[a:a + batch_size] for a in range(0, n, batch_size)]


def _project(B: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, n_batch: int, n: int) -> torch.Tensor:
    """B (layers, rank, D) applied to a batch's words x (layers, W, D), placed at ``slots`` of the
    padded grid → (layers, n_batch, n, rank), zeros at padding. Padding never enters the product:
    the same numbers as projecting the zero-padded batch, at a fraction of the cost when the
    sentences' lengths differ."""
    return _padded(torch.bmm(x, B.transpose(1, 2)), slots, n_batch, n)


def _padded(z: torch.Tensor, slots: torch.Tensor, n_batch: int, n: int) -> torch.Tensor:
    """Projected words z (layers, W, rank) placed at ``slots`` of a zero grid (layers, n_batch, n, rank)."""
    grid = z.new_zeros(z.shape[0], n_batch * n, z.shape[-1]).index_copy(1, slots, z)
    return grid.view(z.shape[0], n_batch, n, z.shape[-1])


def _batch_loss(Bt: torch.Tensor, states: torch.Tensor, b: _Batch, kind: str,
                layer_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per-layer sum over the batch's sentences of their loss (layers,), from flat ``states``
    (all layers, W, D) and the probes' matrices *transposed*, ``Bt`` (layers, D, rank);
    ``layer_rows`` picks the layers of ``states`` that ``Bt``'s rows belong to."""
    x = states[:, b.rows] if layer_rows is None else states[layer_rows[:, None], b.rows[None, :]]
    # Bt is cast to the states' dtype (bfloat16 under a bfloat16 run: the rounding autocast would
    # do). Training keeps B transposed so that no strided copy of a 768 x 768 matrix per layer
    # happens in the step: with B itself, autocast's cast of the transposed view and the
    # gradient's cast back cost more than the product.
    z = torch.bmm(x, Bt.to(x.dtype))  # every word once, no padding
    total = 0
    # split, not slicing: its backward is one concatenation instead of a zero tensor per part
    for zp, p in zip(z.split([p.stop - p.start for p in b.parts], dim=1), b.parts):
        total = total + _loss(_predict(_padded(zp, p.slots, *p.target.shape[:2]), kind), p, kind)
    return total


def _predict(z: torch.Tensor, kind: str) -> torch.Tensor:
    """Projected words z (layers, batch, n, rank) → squared distances (layers, batch, n, n) or norms.

    Under an enclosing ``torch.autocast`` only the projection ``Bx`` (the costly product, in
    :func:`_project`) runs in low precision; norms and distances are formed here in float32, where
    ``|a|² + |b|² − 2ab`` does not cancel away the small distances.
    """
    with torch.autocast(z.device.type, enabled=False):
        z = z.float()
        if kind == "depth":
            return (z * z).sum(-1)
        gram = z @ z.transpose(-1, -2)
        sq = gram.diagonal(dim1=-2, dim2=-1)  # |z_i|², already in the Gram matrix
        return (sq[..., :, None] + sq[..., None, :] - 2 * gram).clamp_min(0.0)


def _loss(pred: torch.Tensor, part: _Part, kind: str) -> torch.Tensor:
    """Per-layer L1 loss (layers,) summed over the part's sentences: per sentence Σ|pred − gold| / n²
    (or / n); the training loss is its mean over the batch's sentences."""
    mask = (part.target >= 0).to(pred.dtype)
    err = ((pred - part.target) * mask).abs()
    per_sent = err.sum(dim=(-1, -2)) if kind == "distance" else err.sum(-1)
    norm = part.lengths ** 2 if kind == "distance" else part.lengths
    return (per_sent / norm).sum(-1)


@dataclass
class FittedProbe:
    """Probes of one kind and rank, one per layer in ``layers``; ``B`` is ``(len(layers), rank, D)``."""

    kind: str
    rank: int
    layers: list[int]
    B: np.ndarray
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # epoch, layer, train_loss, dev_loss, lr (while the layer trains)
    best_epoch: dict = field(default_factory=dict)
    seconds: float = 0.0
    n_train_sentences: int = 0

    def predict(self, ws: WordStates, batch_size: int = 64) -> dict[int, list[np.ndarray]]:
        """Predicted squared distances ``(n, n)`` or depths ``(n,)`` per layer, per sentence."""
        B = torch.as_tensor(self.B)
        states = torch.as_tensor(ws.states[self.layers])
        out: dict[int, list] = {layer: [None] * len(ws) for layer in self.layers}
        order = sorted(range(len(ws)), key=lambda k: (ws.sentences[k].n, k))
        with torch.inference_mode():
            for a in range(0, len(order), batch_size):
                ks = order[a:a + batch_size]
                rows, slots, n = _layout(ws, ks)
                pred = _predict(_project(B, states[:, rows], slots, len(ks), n), self.kind).numpy()
                for li, layer in enumerate(self.layers):
                    for b, k in enumerate(ks):
                        m = ws.sentences[k].n
                        out[layer][k] = pred[li, b, :m, :m] if self.kind == "distance" else pred[li, b, :m]
        return out


class DevSchedule:
    """Hewitt & Manning's per-epoch bookkeeping on the development loss (``regimen.py``), for one probe.

    ``step(dev_loss)`` after each epoch returns ``save`` (keep these parameters: the loss is more
    than ``save_delta`` = 1e-4 *absolutely* below the last saved one), ``cut`` (the learning rate
    was multiplied by ``factor`` = 0.1: as ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min",
    factor=0.1, patience=0)``, i.e. the loss is not 1e-4 *relatively* below the scheduler's best,
    and the change is larger than its ``eps`` = 1e-8) and ``stop`` (``patience`` epochs have
    passed since the last save).
    """

    def __init__(self, lr: float = 1e-3, patience: int = 5, factor: float = 0.1, rel_threshold: float = 1e-4,
                 save_delta: float = 1e-4, eps: float = 1e-8):
        self.lr, self.patience, self.factor = lr, patience, factor
        self.rel_threshold, self.save_delta, self.eps = rel_threshold, save_delta, eps
        self.best = math.inf        # loss at the last save
        self.sched_best = math.inf  # the scheduler's best
        self.stale = 0

    def step(self, dev_loss: float) -> dict:
        cut = False
        if dev_loss < self.sched_best * (1 - self.rel_threshold):
            self.sched_best = dev_loss
        elif self.lr - self.lr * self.factor > self.eps:
            self.lr *= self.factor
            cut = True
        save = dev_loss < self.best - self.save_delta
        if save:
            self.best, self.stale = dev_loss, 0
        else:
            self.stale += 1
        return {"save": save, "cut": cut, "stop": self.stale >= self.patience, "lr": self.lr}


@timed("train")
def fit_probe(train: WordStates, dev: WordStates, kind: str = "distance", rank: int | None = None, *,
              layers: Sequence[int] | None = None, max_epochs: int = 40, patience: int = 5, lr: float = 1e-3,
              batch_size: int = 20, batching: str = "shuffled", seed: int = 0, device: str | torch.device = "cpu",
              precision: str = "float32", progress: bool = True) -> FittedProbe:
    """Fit a distance or depth probe of maximum rank ``rank`` on every layer in ``layers`` (default all).

    Defaults are Hewitt & Manning's (``regimen.py``, ``example/config/naacl19/*.yaml``; see the
    module doc): ``rank=None`` = the hidden size, 40 epochs, batches of 20 random sentences
    (``batching="shuffled"``), Adam at 1e-3, learning rate ×0.1 after every epoch whose dev loss
    is not 1e-4 relatively below the best so far (``ReduceLROnPlateau(factor=0.1, patience=0)``,
    floor 1e-8), parameters kept at the last dev improvement of more than 1e-4 and a stop after
    ``patience`` (5) epochs without one. ``batching="length"`` (ours) fills batches with sentences
    of similar length (less padding) and shuffles the batch order. Each layer has its own
    schedule and early stop. Deterministic for a ``seed`` on one device. ``precision="bfloat16"``
    (the run's compute precision, :func:`bertology.models.check_precision`) computes the probe's
    products under ``torch.autocast`` (the parameters and Adam stay float32); default float32.
    ``"float16"`` (CUDA) trains in float32: without loss scaling its gradients would underflow.
    """
    return fit_probes(train, dev, kind, [rank], layers=layers, max_epochs=max_epochs, patience=patience, lr=lr,
                      batch_size=batch_size, batching=batching, seed=seed, device=device, precision=precision,
                      progress=progress)[0]


def fit_probes(train: WordStates, dev: WordStates, kind: str = "distance", ranks: Sequence[int | None] = (None,), *,
               layers: Sequence[int] | None = None, max_epochs: int = 40, patience: int = 5, lr: float = 1e-3,
               batch_size: int = 20, batching: str = "shuffled", seed: int = 0, device: str | torch.device = "cpu",
               precision: str = "float32", progress: bool = True) -> list[FittedProbe]:
    """:func:`fit_probe` at every maximum rank of ``ranks`` (None: the hidden size), in one
    optimisation: one :class:`FittedProbe` per rank, each what :func:`fit_probe` gives with the
    same arguments (the same initialisation from ``seed``, the same batches, its own schedule and
    early stop per layer; the losses are summed but share no parameter). The rank sweep costs one
    loop over the batches instead of one per rank (its probes are small: Python, not products,
    set the pace). ``seconds`` of each is the wall time of the joint fit."""
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {BATCHINGS}, not {batching!r}")
    D = train.states.shape[-1]
    ranks = [D if r is None else r for r in ranks]
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise ValueError(f"rank must be a positive integer or None (the hidden size), got {r!r}")
    ranks = [int(r) for r in ranks]
    if not ranks or len(set(ranks)) < len(ranks):
        raise ValueError(f"ranks must be distinct and at least one, got {ranks}")
    if not len(train) or not len(dev):
        raise ValueError("the probe needs training and development sentences")
    layers = list(range(train.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < train.n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range 0..{train.n_layers - 1}")
    device = torch.device(device)
    check_precision(precision, device)
    if precision == "float16":  # no loss scaling here: float16 gradients would underflow, so train in float32
        precision = "float32"

    def autocast():
        return (torch.autocast(device.type, dtype=getattr(torch, precision)) if precision != "float32"
                else nullcontext())

    t0 = time.perf_counter()
    # slot = (rank, layer), rank after rank; each rank's matrices drawn as a fit of that rank alone
    slot_rank = [r for r in ranks for _ in layers]
    slot_row = [i for _ in ranks for i in range(len(layers))]  # row of tr_states / dv_states
    init = [(torch.rand(len(layers), r, D, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 0.05
            for r in ranks]  # (layers, rank, D) per rank
    # in the compute precision once (autocast would round them the same way in every batch)
    dtype = getattr(torch, precision)
    tr_states = torch.as_tensor(train.states[layers]).to(device, dtype)
    dv_states = torch.as_tensor(dev.states[layers]).to(device, dtype)
    tr_targets = [_targets(s, kind) for s in train.sentences]
    tr_fixed = _make_batches(train, kind, batch_size, targets=tr_targets) if batching == "length" else None
    dv_batches = [_to(b, device) for b in _make_batches(dev, kind, batch_size)]
    rng = np.random.default_rng(seed)
    n_slots = len(slot_rank)
    sched = [DevSchedule(lr, patience) for _ in range(n_slots)]
    best_B = [B.clone() for B in init]
    best_epoch = [0] * n_slots
    active = list(range(n_slots))
    groups = _LayerGroups([B.transpose(1, 2).contiguous().to(device) for B in init], slot_row, active, [lr] * n_slots)  # B^T
    rows = []
    what = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
    for epoch in tqdm(range(1, max_epochs + 1), desc=f"{kind} probe {what}", disable=not progress):
        if tr_fixed is not None:
            epoch_batches = [tr_fixed[i] for i in rng.permutation(len(tr_fixed))]
        else:
            epoch_batches = (_assemble(train, tr_targets, ks, kind)
                             for ks in shuffled_batches(len(train), batch_size, rng))
        tr_loss = torch.zeros(n_slots)
        for b in epoch_batches:
            b = _to(b, device)
            groups.opt.zero_grad(set_to_none=True)
            total = 0
            for idx, which, P in groups:
                with autocast():
                    loss = _batch_loss(P, tr_states, b, kind, which)
                total = total + loss.sum()
                tr_loss[idx] += loss.detach().cpu()
            (total / b.n).backward()  # mean over the batch's sentences, as Hewitt & Manning
            groups.opt.step()
        tr_loss /= len(train)
        dv_loss = torch.zeros(n_slots)
        with torch.inference_mode(), autocast():
            for idx, which, P in groups:
                for b in dv_batches:
                    dv_loss[idx] += _batch_loss(P.detach(), dv_states, b, kind, which).cpu()
        dv_loss /= len(dev)
        for li in list(active):
            rows.append((epoch, slot_rank[li], layers[slot_row[li]], float(tr_loss[li]), float(dv_loss[li]),
                         sched[li].lr))
            step = sched[li].step(float(dv_loss[li]))
            if step["save"]:
                best_B[li // len(layers)][slot_row[li]] = groups.weights(li).cpu().T
                best_epoch[li] = epoch
            if step["stop"]:
                active.remove(li)
        if not active:
            break
        groups.regroup(active, [sd.lr for sd in sched])
    history = pd.DataFrame(rows, columns=["epoch", "rank", "layer", "train_loss", "dev_loss", "lr"])
    seconds = time.perf_counter() - t0
    out = []
    for j, r in enumerate(ranks):
        h = history[history["rank"] == r].drop(columns="rank").reset_index(drop=True)
        epochs = {layer: best_epoch[j * len(layers) + i] for i, layer in enumerate(layers)}
        out.append(FittedProbe(kind, r, layers, best_B[j].numpy(), h, epochs, seconds, len(train)))
    return out


def _adam(param_groups) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one (one pass over the parameters instead of
    about six: on a bert-base probe, 13 x 768 x 768 weights, a step is ~4x faster on a CPU);
    the same update rule either way."""
    try:
        return torch.optim.Adam(param_groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(param_groups)


class _LayerGroups:
    """The probes still training, one stacked parameter per (rank, learning rate).

    A probe is a *slot* (in :func:`fit_probes` one (rank, layer) pair) with its own schedule
    (its own learning rate), yet slots that share a rank and a rate share one stacked parameter
    (``(slots, D, rank)``, the matrices transposed) and one Adam group, so a step costs one
    product and one optimizer update per distinct (rank, rate), not per slot. After each epoch
    :meth:`regroup` moves slots whose rate was cut and drops slots that stopped, carrying every
    slot's weights and Adam moments over unchanged (Adam is elementwise: this is the same
    optimisation as one Adam per slot). Iterating yields ``(slot indices, the index tensor of
    their rows of the states, parameter)``.
    """

    def __init__(self, weights: Sequence[torch.Tensor], rows: Sequence[int], active: list[int], lrs: list[float]):
        """``weights``: ``(layers, D, rank)`` blocks, slot after slot (slot ``i`` is row ``i`` of the
        blocks laid end to end); ``rows[i]``: the row of the states that slot ``i`` reads."""
        self.opt, self._groups, self._rows = None, [], list(rows)
        flat = [w for block in weights for w in block]
        self._build({li: (flat[li], None, None) for li in active}, None, active, lrs)

    def __iter__(self):
        return iter(self._groups)

    def weights(self, li: int) -> torch.Tensor:
        for idx, _, P in self._groups:
            if li in idx:
                return P.detach()[idx.index(li)].clone()
        raise KeyError(li)

    def regroup(self, active: list[int], lrs: list[float]) -> None:
        current = {li: rate for (idx, _, _), g in zip(self._groups, self.opt.param_groups) for li in idx
                   for rate in [g["lr"]]}
        if current == {li: lrs[li] for li in active}:
            return
        per, step = {}, None
        for idx, _, P in self._groups:
            st = self.opt.state.get(P, {})
            step = st.get("step", step)
            for j, li in enumerate(idx):
                per[li] = (P.detach()[j], st["exp_avg"][j] if st else None, st["exp_avg_sq"][j] if st else None)
        self._build(per, step, active, lrs)

    def _build(self, per: dict, step, active: list[int], lrs: list[float]) -> None:
        by_key: dict[tuple[int, float], list[int]] = {}
        for li in sorted(active):
            by_key.setdefault((per[li][0].shape[-1], lrs[li]), []).append(li)
        groups, param_groups, states = [], [], []
        for (_, rate), idx in by_key.items():
            P = torch.nn.Parameter(torch.stack([per[li][0] for li in idx]))
            groups.append((idx, torch.tensor([self._rows[li] for li in idx], device=P.device), P))
            param_groups.append({"params": [P], "lr": rate})
            if per[idx[0]][1] is not None:
                states.append((P, {"step": step.clone(), "exp_avg": torch.stack([per[li][1] for li in idx]),
                                   "exp_avg_sq": torch.stack([per[li][2] for li in idx])}))
        self.opt = _adam(param_groups)
        for P, st in states:
            self.opt.state[P] = st
        self._groups = groups


def _to(b: _Batch, device) -> _Batch:
    if device.type == "cpu":
        return b
    return _Batch(b.rows.to(device), [_Part(p.start, p.stop, p.slots.to(device), p.target.to(device),
                                            p.lengths.to(device)) for p in b.parts], b.n)


# ----------------------------------------------------------------------------- evaluation


def evaluate(probe: FittedProbe, ws: WordStates, min_len: int = 5, max_len: int = 50,
             uuas_gold: str = "mst") -> pd.DataFrame:
    """Long table ``layer, kind, rank, metric, value, n`` of the probe's metrics on ``ws``'s gold trees
    (``uuas_gold``: see :func:`gold_edges`)."""
    preds = probe.predict(ws)
    rows = []
    for layer, p in preds.items():
        if probe.kind == "distance":
            u = uuas(p, ws.sentences, uuas_gold)
            d, tab = distance_spearman(p, ws.sentences, min_len, max_len)
            rows += [(layer, "uuas", u["value"], u["total"]), (layer, "dspr", d, int(tab.n.sum()) if len(tab) else 0)]
        else:
            r = root_accuracy(p, ws.sentences)
            s, tab = norm_spearman(p, ws.sentences, min_len, max_len)
            rows += [(layer, "root_acc", r["value"], r["total"]), (layer, "nspr", s, int(tab.n.sum()) if len(tab) else 0)]
    df = pd.DataFrame(rows, columns=["layer", "metric", "value", "n"])
    df.insert(1, "kind", probe.kind)
    df.insert(2, "rank", probe.rank)
    return df


def best_layer(table: pd.DataFrame, metric: str = "uuas") -> int:
    """Layer with the highest ``metric`` in a table from :func:`evaluate` (ties → lower layer)."""
    t = table[table.metric == metric].sort_values(["value", "layer"], ascending=[False, True])
    if t.empty:
        raise ValueError(f"no {metric!r} rows in the table")
    return int(t.iloc[0].layer)


def predicted_tree(probe: FittedProbe, ws: WordStates, k: int, layer: int, uuas_gold: str = "mst") -> dict:
    """Gold (see :func:`gold_edges`) and predicted (MST) undirected edges of sentence ``k`` at
    ``layer``, punctuation excluded."""
    if probe.kind != "distance":
        raise ValueError("trees come from a distance probe")
    sub = WordStates(ws.states[:, ws.offsets[k]:ws.offsets[k + 1]], np.array([0, ws.sentences[k].n]),
                     [ws.sentences[k]])
    pred = probe.predict(sub)[layer][0]
    s = ws.sentences[k]
    keep = np.flatnonzero(~_punct_mask(s))
    gold = sorted(gold_edges(s, uuas_gold))
    predicted = sorted((int(keep[a]), int(keep[b])) for a, b in mst_edges(pred[np.ix_(keep, keep)]))
    return {"words": list(s.words), "gold": gold, "predicted": predicted, "layer": layer,
            "correct": len(set(gold) & set(predicted)), "total": len(gold)}


def probe_layers(train: WordStates, dev: WordStates, test: WordStates, rank: int | None = None, *,
                 kinds: Sequence[str] = KINDS, layers: Sequence[int] | None = None, label: str = "",
                 uuas_gold: str = "mst", **fit_kwargs) -> tuple[pd.DataFrame, dict[str, FittedProbe]]:
    """Fit the distance and depth probes on every layer and score them on ``test`` (§4, Table 1).

    ``rank=None`` is the hidden size (Hewitt & Manning's configs); ``fit_kwargs`` go to
    :func:`fit_probe`. Returns the long table ``model, layer, kind, rank, metric, value, n``
    (``model`` = ``label``) and the fitted probes by kind.
    """
    probes = {kind: fit_probe(train, dev, kind, rank, layers=layers, **fit_kwargs) for kind in kinds}
    return score_probes(probes.values(), test, label, uuas_gold), probes


def score_probes(probes, test: WordStates, label: str = "", uuas_gold: str = "mst") -> pd.DataFrame:
    """:func:`evaluate` of every probe in ``probes`` on ``test``, one long table ``model, layer,
    kind, rank, metric, value, n`` (``model`` = ``label``), the probes' rows in their order."""
    table = pd.concat([evaluate(p, test, uuas_gold=uuas_gold) for p in probes], ignore_index=True)
    table.insert(0, "model", label)
    return table


# ----------------------------------------------------------------------------- notebook 04: runs, findings, text


def check_parameters(ranks: Sequence[int], batching: str = "shuffled", uuas_gold: str = "mst",
                     control_layers: int | None = None) -> None:
    """Notebook 04's probe parameters: ``probe_batching`` one of :data:`BATCHINGS`, ``uuas_gold`` one
    of :data:`UUAS_GOLD`, ``ranks`` a non-empty list of positive integers, ``control_layers`` None,
    0 or an integer >= 2 (:func:`control_layer_set`); else a
    :class:`bertology.notebook.ParameterError` naming the parameter."""
    from .notebook import ParameterError, check_choice

    check_choice("probe_batching", batching, BATCHINGS)
    check_choice("uuas_gold", uuas_gold, UUAS_GOLD)
    if not isinstance(ranks, (list, tuple)) or not ranks or not all(isinstance(r, int) and r > 0 for r in ranks):
        raise ParameterError(f"parameter 'ranks' must be a list of positive integers, got {ranks!r}")
    try:
        control_layer_set(2, control_layers, best=[0])
    except ValueError as exc:
        raise ParameterError(f"parameter 'control_layers': {exc}") from None


def split_states(loaded: LoadedModel, splits: dict[str, Sequence[Sentence]], *, batch_size: int = 32,
                 desc: str = "states", progress: bool = True, top: int | None = None) -> dict[str, WordStates]:
    """:func:`word_states` of every named split (``{"train": [...], "dev": [...], "test": [...]}``),
    in that order, each in one batched pass (progress bar ``"<desc> <name>"``; ``top``: the layers
    0..top only, the model cut there)."""
    return {name: word_states(loaded, sents, batch_size=batch_size, desc=f"{desc} {name}", progress=progress, top=top)
            for name, sents in splits.items()}


def dropped_notes(states: dict[str, WordStates]) -> list[str]:
    """The report note naming, per split, how many sentences were too long for the model (none: ``[]``)."""
    dropped = {name: ws.dropped for name, ws in states.items() if ws.dropped}
    return [f"Sentences longer than the model's maximum length were left out: {dropped}."] if dropped else []


def fit_splits(states: dict[str, WordStates], rank: int | None = None, *, label: str = "",
               **kwargs) -> tuple[pd.DataFrame, dict[str, FittedProbe]]:
    """:func:`probe_layers` fitted on ``states["train"]``, early-stopped on ``"dev"``, scored on ``"test"``."""
    return probe_layers(states["train"], states["dev"], states["test"], rank, label=label, **kwargs)


def probe_splits(run, data: str = "auto", n_train: int = 2000, n_dev: int = 400, n_test: int = 1000,
                 language_note: Callable[[str], str] | None = None) -> dict:
    """Notebook 04's train/dev/test sentences: ``run.treebank`` (:class:`bertology.notebook.Run`)
    of ``data`` with at most ``n_train`` / ``n_dev`` / ``n_test`` sentences (a treebank without a
    train split gives its dev sentences after the first ``n_dev`` as train). Records the data line,
    the split sizes and the :func:`data_deviation`, and, when the treebank is not English and
    ``language_note`` is given, the note ``language_note(language)`` (notebook 04:
    :func:`bertology.minimal_pairs.language_note`). Returns ``{"train": [...], "dev": [...], "test": [...]}``."""
    train = run.treebank(data, "train", limit=n_train, train_from_dev=n_dev)
    splits = {"train": train, "dev": run.treebank(data, "dev", limit=n_dev), "test": run.treebank(data, "test", limit=n_test)}
    sizes = {f"n_{name}": len(sents) for name, sents in splits.items()}
    run.set_data(f"{train.info.title}: train/dev/test", **sizes)
    run.deviation(data_deviation(train.info.title, *sizes.values()))
    if not train.info.english and language_note is not None:
        run.note(language_note(train.info.language))
    return splits


@dataclass
class ProbeStudy:
    """Section 1 of notebook 04 (:func:`probe_study`): the model's word vectors and probes, the
    :func:`probe_layers` tables of the model and of the random-init control, their :func:`findings`
    and the fit settings (keyword arguments of :func:`fit_splits`, for :func:`rank_sweep`)."""

    states: dict[str, WordStates]
    probes: dict[str, FittedProbe]
    model_table: pd.DataFrame
    control_table: pd.DataFrame
    summary: dict
    fit: dict

    @property
    def table(self) -> pd.DataFrame:
        """The model's and the control's rows in one table (the report's ``structural_probe``)."""
        return pd.concat([self.model_table, self.control_table], ignore_index=True)

    @property
    def best(self) -> int:
        """The best distance-probe layer by UUAS (``summary["best_layer_uuas"]``)."""
        return self.summary["best_layer_uuas"]


def control_layer_set(n_states: int, n_spaced: int | None, best: Sequence[int] = ()) -> list[int]:
    """The layers (0 = embeddings .. ``n_states - 1``) at which notebook 04 probes the random-init
    control: ``n_spaced`` evenly spaced ones, the first and the last included, and the ``best``
    layers of the model (so that the model's best layer is compared at the same depth); only the
    ``best`` layers when ``n_spaced`` is 0; every layer when it is None or covers them all.
    13 states, 4 spaced, best 7 and 5: ``[0, 4, 5, 7, 8, 12]``; 0 spaced: ``[5, 7]``."""
    if n_spaced is not None and (isinstance(n_spaced, bool) or not isinstance(n_spaced, (int, np.integer))
                                 or n_spaced < 0 or n_spaced == 1):
        raise ValueError("control_layers must be None, 0 (the model's best layers only) or an integer >= 2 "
                         f"(first and last layer), got {n_spaced!r}")
    if n_spaced is None or n_spaced >= n_states:
        return list(range(n_states))
    if n_spaced == 0 and not len(best):
        raise ValueError("control_layers=0 probes the model's best layers, and none were given")
    spaced = {int(round(i * (n_states - 1) / (n_spaced - 1))) for i in range(n_spaced)} if n_spaced else set()
    return sorted(spaced | {int(b) for b in best})


def probe_study(run, splits: dict[str, Sequence[Sentence]], rank: int | None = None, *, batch_size: int = 32,
                max_epochs: int = 40, patience: int = 5, lr: float = 1e-3, batching: str = "shuffled",
                uuas_gold: str = "mst", control_layers: int | None = None, progress: bool = True) -> ProbeStudy:
    """Notebook 04, section 1: structural probes of every layer of ``run.loaded`` and of its
    random-init control (:func:`bertology.models.random_init_control`, seeded with ``run.seed``),
    the control at :func:`control_layer_set` (``control_layers`` evenly spaced layers and the
    model's best distance and depth layers; None, the default here: every layer). The control runs
    up to the highest layer it is probed at (:func:`word_states` ``top``): the same states, fewer
    passes through layers no probe reads.

    :func:`split_states` of ``splits`` (:func:`probe_splits`) for the model and for the control,
    both fitted with :func:`fit_splits` (``rank``, ``max_epochs``, ``patience``, ``lr``,
    ``batching``, ``uuas_gold``; seed, device and precision of the run). Records on ``run``
    (:class:`bertology.notebook.Run`) the :func:`dropped_notes`, the method
    ``hewitt_manning.probe`` with its options, :func:`fit_record`, ``values["control_layers"]``
    (with a note in the report when the control skips layers), ``values["probe_summary"]``
    (:func:`findings`) and its :func:`key_numbers`; the tables are left to the caller."""
    from .models import random_init_control

    states = split_states(run.loaded, splits, batch_size=batch_size, progress=progress)
    for note in dropped_notes(states):
        run.note(note)
    fit = dict(max_epochs=max_epochs, patience=patience, lr=lr, batching=batching, uuas_gold=uuas_gold)
    run.method("hewitt_manning.probe", probe_rank=rank, hidden_size=run.info.hidden_size, **fit)
    fit.update(seed=run.seed, device=run.loaded.device, precision=run.info.precision)
    model_table, probes = fit_splits(states, rank, label=run.info.name, progress=progress, **fit)
    run.record(**fit_record(probes))
    n_states = states["train"].n_layers
    best = [best_layer(model_table, "uuas"), best_layer(model_table, "nspr")]
    layers = control_layer_set(n_states, control_layers, best)
    run.value("control_layers", layers)
    if len(layers) < n_states:
        which = (f"{control_layers} evenly spaced and the model's best distance and depth layers" if control_layers
                 else "the model's best distance and depth layers")
        run.note(f"Random-init control: structural probes at layer{'s' if len(layers) > 1 else ''} "
                 f"{', '.join(map(str, layers))} of 0-{n_states - 1} ({which}), for CPU time; "
                 + ("" if control_layers else "control_layers=4 adds 4 evenly spaced layers, ")
                 + "control_layers=None probes every layer. Hewitt & Manning report their random baseline as one number.")
    control = random_init_control(run.loaded, seed=run.seed)
    # the control runs up to its highest probed layer only (the layers above it cannot change its states)
    control_states = split_states(control, splits, batch_size=batch_size, desc="control states", progress=progress,
                                  top=max(layers))
    control_table, _ = fit_splits(control_states, rank, layers=layers, label="random-init control",
                                  progress=progress, **fit)
    del control, control_states
    summary = findings(model_table, control_table)
    run.value("probe_summary", summary)
    run.keys(key_numbers(summary))
    return ProbeStudy(states, probes, model_table, control_table, summary, fit)


def example_tree(study: ProbeStudy, min_words: int = 10, max_words: int = 16) -> dict:
    """:func:`predicted_tree` of the best layer's distance probe of ``study`` on its
    :func:`example_sentence` of the test split (the study's ``uuas_gold``)."""
    ws = study.states["test"]
    k = example_sentence(ws, min_words, max_words)
    return predicted_tree(study.probes["distance"], ws, k, layer=study.best, uuas_gold=study.fit["uuas_gold"])


def fit_record(probes: dict[str, FittedProbe]) -> dict:
    """What the run keeps about the fits: seconds per probe kind and the best epoch of every layer."""
    return {"probe_seconds": {k: round(p.seconds, 1) for k, p in probes.items()},
            "probe_best_epoch": {k: p.best_epoch for k, p in probes.items()}}


def rank_sweep(states: dict[str, WordStates], ranks: Sequence[int], layer: int, *, label: str = "",
               **kwargs) -> pd.DataFrame:
    """Distance and depth probes of ``layer`` refitted at every maximum rank in ``ranks`` (Hewitt &
    Manning's rank figure): one table ``model, layer, kind, rank, metric, value, n`` (``model`` = ``label``).
    ``kwargs``: ``uuas_gold`` for the scores, the rest to :func:`fit_probes`, which fits all ranks of a
    kind in one loop (each rank's probe as a fit of its own)."""
    uuas_gold = kwargs.pop("uuas_gold", "mst")
    ranks = list(dict.fromkeys(ranks))  # a rank asked for twice is fitted once
    fitted = {kind: fit_probes(states["train"], states["dev"], kind, ranks, layers=[layer], **kwargs)
              for kind in KINDS}  # every rank in one loop per kind
    return score_probes([fitted[kind][j] for j in range(len(ranks)) for kind in KINDS], states["test"], label, uuas_gold)


def example_sentence(ws: WordStates, min_words: int = 10, max_words: int = 16) -> int:
    """Index of the first sentence of ``min_words``–``max_words`` words (readable as an arc
    diagram); 0 when there is none."""
    return next((k for k, s in enumerate(ws.sentences) if min_words <= s.n <= max_words), 0)


def data_deviation(title: str, n_train: int, n_dev: int, n_test: int) -> str:
    """The report's data deviation: which treebank and how many sentences, against Hewitt & Manning's WSJ."""
    return (f"Data: {title}, {n_train} train / {n_dev} dev / {n_test} test sentences "
            "(Hewitt & Manning: 39,832 WSJ train sentences).")


def findings(model_table: pd.DataFrame, control_table: pd.DataFrame) -> dict:
    """The probe numbers of the "what this run shows" cell (``values["probe_summary"]``), from the
    :func:`probe_layers` tables of the model and of the random-init control: the best distance-probe
    layer by UUAS with its UUAS and DSpr., the best depth-probe layer by NSpr. with its NSpr. and
    root%, the same at layer 0 (embeddings), and the control's best UUAS over all layers."""
    by = model_table.set_index(["layer", "metric"])["value"]
    best, best_depth = best_layer(model_table, "uuas"), best_layer(model_table, "nspr")
    control = control_table.loc[control_table["metric"] == "uuas", "value"]
    return {
        "best_layer_uuas": best, "uuas_best": float(by[(best, "uuas")]), "dspr_best": float(by[(best, "dspr")]),
        "uuas_layer0": float(by[(0, "uuas")]), "uuas_control_best": float(control.max()) if len(control) else math.nan,
        "best_layer_nspr": best_depth, "nspr_best": float(by[(best_depth, "nspr")]),
        "root_acc_best": float(by[(best_depth, "root_acc")]),
        "nspr_layer0": float(by[(0, "nspr")]), "root_acc_layer0": float(by[(0, "root_acc")]),
    }


def key_numbers(f: dict) -> dict[str, float]:
    """Headline numbers of notebook 04 for the index (from :func:`findings`)."""
    return {f"UUAS, best layer ({f['best_layer_uuas']})": f["uuas_best"],
            "UUAS, layer 0 (embeddings)": f["uuas_layer0"],
            "UUAS, random-init control (best layer)": f["uuas_control_best"]}


#: UUAS gain of the best layer over the better baseline (layer 0, control) above which the
#: "what this run shows" cell says the contextual layers add structure
ADDS_STRUCTURE = 0.05


def findings_text(f: dict, sweep: pd.DataFrame, model: str, n_train: int, rank: int) -> list[str]:
    """Markdown lines on the probes: best layers against the baselines (:func:`findings`) and the rank
    sweep (``sweep`` from :func:`rank_sweep`: UUAS at its smallest and largest rank)."""
    gain = f["uuas_best"] - max(f["uuas_layer0"], f["uuas_control_best"])
    lines = [
        f"**Structural probe ({model}, {n_train} train sentences, rank {rank})**: the best layer for the distance "
        f"probe is **{f['best_layer_uuas']}** with UUAS **{f['uuas_best']:.3f}** and DSpr. {f['dspr_best']:.3f}; "
        f"layer 0 (embeddings) reaches UUAS {f['uuas_layer0']:.3f} and the random-init control at most "
        f"{f['uuas_control_best']:.3f}. " + ("The contextual layers add structure beyond the embeddings."
                                             if gain > ADDS_STRUCTURE else "The contextual layers add little beyond the baselines."),
        f"**Depth probe**: best layer {f['best_layer_nspr']}, NSpr. {f['nspr_best']:.3f} and root% "
        f"{f['root_acc_best']:.3f} (layer 0: {f['nspr_layer0']:.3f} / {f['root_acc_layer0']:.3f}).",
    ]
    u = sweep[sweep["metric"] == "uuas"].sort_values("rank", kind="stable")
    if len(u):
        lines.append(f"**Rank**: at layer {int(u['layer'].iloc[0])}, UUAS goes from {u['value'].iloc[0]:.3f} "
                     f"(rank {int(u['rank'].iloc[0])}) to {u['value'].iloc[-1]:.3f} (rank {int(u['rank'].iloc[-1])}).")
    return lines


def reference_rows(min_rank: int = 64) -> pd.DataFrame:
    """:data:`REFERENCE` rows without a rank (Clark et al.'s table) or at rank ``min_rank`` and above."""
    return REFERENCE[REFERENCE["rank"].isna() | (REFERENCE["rank"] >= min_rank)]


def reference_text(min_rank: int = 64) -> str:
    """The paragraph of the report on the papers' structural-probe numbers and where they come from;
    the ranges are read from :data:`REFERENCE` (ranks ``min_rank`` and above)."""
    ref = reference_rows(min_rank)
    plot = ref[ref["rank"].notna()]
    clark = ref.loc[ref["rank"].isna() & (ref["metric"] == "uuas"), "value"]

    def span(metric):
        v = plot.loc[plot["metric"] == metric, "value"]
        return f"{v.min():g}" if v.min() == v.max() else f"{v.min():g}–{v.max():g}"

    return ("**References from the papers (PTB WSJ, Stanford Dependencies — reference, not target):** "
            f"Clark et al. (2019, Table 3) list the structural probe on BERT-base at **{100 * clark.iloc[0]:.0f} UUAS**; "
            f"the authors' rank-plot data for BERT-base layer 7 reach UUAS {span('uuas')} and DSpr. {span('dspr')} "
            f"at ranks ≥ {min_rank} (github.com/john-hewitt/control-tasks, `scripts/codalab/make_emnlp19_pos_graph.py`, "
            "commented out). We could not find Hewitt & Manning's Table 1 values for BERT-large, root% or NSpr. in a "
            "source we could check, so none are printed.")
