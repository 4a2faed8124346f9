"""Perturbed inputs and how much they change a model's word states (Primer §3.1; Ettinger 2020).

The Primer (Rogers et al. 2020, §3.1) summarises Ettinger (2020) as: BERT's predictions "were not
altered even with shuffled word order, truncated sentences, removed subjects and objects". Here we
measure, per layer, how much the *representations* and a structural probe's reading of them
change under exactly those perturbations.

**Perturbations** (each returns a new :class:`~bertology.data.Sentence` plus ``source``, the
original 0-based index of every word that survives):

- ``shuffle``: the words in a random order (seeded; never the identity when ``n ≥ 2``). The gold tree
  is the original tree carried through the permutation: word ``w`` keeps its head word. So a probe
  that still recovers "the original tree" from shuffled input is reading lexical identity rather
  than word order.
- ``truncate``: the first ``ceil(n/2)`` words.
- ``drop_subject`` / ``drop_object``: the whole subtree of the root's first ``nsubj``/``nsubj:pass``
  (resp. ``obj``) dependent is removed; sentences without one are skipped and counted.

**Gold tree of a sentence that lost words** (:func:`restrict_tree`): each surviving word is
attached to its nearest surviving ancestor. Removing a whole subtree leaves a connected tree, so
for ``drop_*`` this is exactly the induced subtree. Truncation can cut the root away and leave
several words without a surviving ancestor; then the shallowest of them (ties → leftmost) becomes
the root and the others attach to it. This is a convention (a fragment has no gold parse); it is
documented in the report.

**Similarity of states** (:func:`state_similarity`): for every layer, linear CKA (Kornblith et al.
2019) and the mean cosine between the intact and perturbed vectors of the *same* surviving words,
plus a chance level for the cosine (the same vectors paired with a random other surviving word),
since word vectors of BERT-like models are anisotropic and unrelated words already have a high
cosine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .data import Sentence

SUBJECT = ("nsubj", "nsubj:pass")
OBJECT = ("obj",)
KINDS = ("shuffle", "truncate", "drop_subject", "drop_object")


@dataclass
class Perturbed:
    """One perturbed sentence: ``sentence.words[i]`` was word ``source[i]`` of the original."""

    kind: str
    index: int  # position of the original sentence in the list given to perturb()
    sentence: Sentence
    source: list[int]


def _tree_depths(heads: np.ndarray) -> np.ndarray:
    from .structural_probe import tree_depths

    return tree_depths(heads)


def subtree(heads: Sequence[int], i: int) -> set[int]:
    """0-based indices of word ``i`` and all its descendants (``heads`` 1-based, 0 = root)."""
    h = np.asarray(heads)
    children: dict[int, list[int]] = {}
    for k, hk in enumerate(h):
        if hk > 0:
            children.setdefault(int(hk) - 1, []).append(k)
    out, stack = set(), [i]
    while stack:
        k = stack.pop()
        if k not in out:
            out.add(k)
            stack.extend(children.get(k, []))
    return out


def restrict_tree(heads: Sequence[int], keep: Sequence[int]) -> list[int]:
    """Heads (1-based over the kept words, 0 = root) of the tree induced on ``keep`` (0-based,
    increasing): each kept word attaches to its nearest kept ancestor; if several kept words have
    none, the shallowest (ties → leftmost) becomes the root and the others attach to it."""
    h = np.asarray(heads, dtype=np.int64)
    keep = [int(k) for k in keep]
    if not keep:
        raise ValueError("cannot restrict a tree to no words")
    if sorted(set(keep)) != keep:
        raise ValueError("keep must be increasing word indices without repeats")
    new_index = {old: new for new, old in enumerate(keep)}
    depth = _tree_depths(h)
    out, orphans = [], []
    for old in keep:
        j = h[old] - 1
        while j >= 0 and j not in new_index:
            j = h[j] - 1
        if j >= 0:
            out.append(new_index[j] + 1)
        else:
            out.append(0)
            orphans.append(old)
    root = min(orphans, key=lambda o: (depth[o], o))
    for o in orphans:
        if o != root:
            out[new_index[o]] = new_index[root] + 1
    return out


def _take(s: Sentence, keep: Sequence[int], heads: Sequence[int], tag: str) -> Sentence:
    return Sentence(
        words=[s.words[k] for k in keep], heads=list(heads), deprels=[s.deprels[k] for k in keep],
        upos=[s.upos[k] for k in keep], sent_id=f"{s.sent_id}|{tag}" if s.sent_id else tag,
        text=None, doc_id=s.doc_id, misc=[s.misc[k] for k in keep],
    )


def shuffle_words(s: Sentence, rng: np.random.Generator) -> tuple[Sentence, list[int]]:
    """Words in a random order (not the identity for n ≥ 2); each word keeps its head word."""
    n = s.n
    perm = np.arange(n)
    if n >= 2:
        while (perm == np.arange(n)).all():
            perm = rng.permutation(n)
    new_of_old = np.empty(n, dtype=np.int64)
    new_of_old[perm] = np.arange(n)
    heads = [0 if s.heads[o] == 0 else int(new_of_old[s.heads[o] - 1]) + 1 for o in perm]
    return _take(s, perm.tolist(), heads, "shuffle"), perm.tolist()


def truncate(s: Sentence, fraction: float = 0.5) -> tuple[Sentence, list[int]]:
    """The first ``ceil(fraction · n)`` words, with the restricted tree (see module doc)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    keep = list(range(max(1, math.ceil(fraction * s.n))))
    return _take(s, keep, restrict_tree(s.heads, keep), "truncate"), keep


def drop_dependent(s: Sentence, relations: Sequence[str]) -> tuple[Sentence, list[int]] | None:
    """Remove the subtree of the root's first dependent with a relation in ``relations``;
    ``None`` when there is none or fewer than two words would remain."""
    root = s.heads.index(0)
    dep = next((i for i, (h, r) in enumerate(zip(s.heads, s.deprels)) if h == root + 1 and r in relations), None)
    if dep is None:
        return None
    gone = subtree(s.heads, dep)
    keep = [k for k in range(s.n) if k not in gone]
    if len(keep) < 2:
        return None
    tag = "drop_" + relations[0]
    return _take(s, keep, restrict_tree(s.heads, keep), tag), keep


def perturb(sentences: Sequence[Sentence], kind: str, seed: int = 0) -> tuple[list[Perturbed], int]:
    """Perturb every sentence one way; returns the perturbed sentences and how many were skipped.

    ``kind``: ``"shuffle"``, ``"truncate"``, ``"drop_subject"`` or ``"drop_object"``. Sentences
    with fewer than two words are skipped (nothing to perturb).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    rng = np.random.default_rng(seed)
    fn: dict[str, Callable] = {
        "shuffle": lambda s: shuffle_words(s, rng),
        "truncate": truncate,
        "drop_subject": lambda s: drop_dependent(s, SUBJECT),
        "drop_object": lambda s: drop_dependent(s, OBJECT),
    }
    out, skipped = [], 0
    for i, s in enumerate(sentences):
        r = fn[kind](s) if s.n >= 2 else None
        if r is None:
            skipped += 1
            continue
        out.append(Perturbed(kind, i, r[0], list(r[1])))
    return out, skipped


# ----------------------------------------------------------------------------- similarity


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA between two sets of row vectors of the same items (Kornblith et al. 2019):
    ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` after centring each column. 1 = same up to rotation and
    isotropic scale; NaN if either side is constant."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be (items, dims) with the same items, got {X.shape} and {Y.shape}")
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    # the n x n Gram form is cheaper when there are fewer items than dimensions
    if X.shape[0] < X.shape[1]:
        Kx, Ky = X @ X.T, Y @ Y.T
        num, den = (Kx * Ky).sum(), np.linalg.norm(Kx) * np.linalg.norm(Ky)
    else:
        num = np.linalg.norm(Y.T @ X) ** 2
        den = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    return float(num / den) if den > 0 else float("nan")


def mean_cosine(X: np.ndarray, Y: np.ndarray) -> float:
    """Mean cosine similarity between row ``i`` of ``X`` and row ``i`` of ``Y``."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same shape, got {X.shape} and {Y.shape}")
    den = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1)
    return float(np.mean((X * Y).sum(1) / np.where(den > 0, den, 1)))


def paired_states(intact, perturbed, items: Sequence[Perturbed], intact_rows: Sequence[int] | None = None):
    """Stack, per layer, the intact and perturbed vectors of every surviving word.

    ``intact``/``perturbed`` are :class:`bertology.structural_probe.WordStates`; ``perturbed``
    sentence ``k`` is ``items[k]``, and its original is sentence ``intact_rows[k]`` of ``intact``
    (default: ``items[k].index``). Returns two ``(layers, words, D)`` arrays, aligned row by row.
    """
    if len(items) != len(perturbed):
        raise ValueError(f"{len(items)} perturbed items but {len(perturbed)} perturbed sentences")
    rows = [p.index for p in items] if intact_rows is None else list(intact_rows)
    xs, ys = [], []
    for k, (p, r) in enumerate(zip(items, rows)):
        a = intact.offsets[r]
        xs.append(intact.states[:, a + np.asarray(p.source)])
        ys.append(perturbed.sentence(k))
    return np.concatenate(xs, 1), np.concatenate(ys, 1)


def state_similarity(X: np.ndarray, Y: np.ndarray, seed: int = 0, max_items: int | None = 20000) -> pd.DataFrame:
    """Per layer: linear CKA, mean cosine, and the chance cosine (rows of ``Y`` randomly re-paired).

    ``X``, ``Y``: ``(layers, words, D)`` from :func:`paired_states`. With more than ``max_items``
    words a seeded random subset is used (CKA's cost grows with the number of words).
    Returns ``layer, metric, value, n``.
    """
    if X.shape != Y.shape:
        raise ValueError(f"intact and perturbed states differ in shape: {X.shape} vs {Y.shape}")
    rng = np.random.default_rng(seed)
    n = X.shape[1]
    pick = np.sort(rng.choice(n, max_items, replace=False)) if max_items and n > max_items else np.arange(n)
    other = rng.permutation(len(pick))
    rows = []
    for layer in range(X.shape[0]):
        x, y = X[layer, pick], Y[layer, pick]
        rows += [(layer, "cka", linear_cka(x, y), len(pick)),
                 (layer, "cosine", mean_cosine(x, y), len(pick)),
                 (layer, "cosine_chance", mean_cosine(x, y[other]), len(pick))]
    return pd.DataFrame(rows, columns=["layer", "metric", "value", "n"])


def perturbation_study(loaded, intact, probes: Sequence, kinds: Sequence[str] = KINDS, seed: int = 0,
                       batch_size: int = 32, progress: bool = True, limit: int | None = None) -> dict:
    """Perturb the sentences of ``intact`` (a :class:`~bertology.structural_probe.WordStates` of
    ``loaded``; only its first ``limit`` sentences when ``limit`` is given) every way in ``kinds``,
    run the model on them, and compare.

    Returns a dict of tidy tables:
    ``similarity`` (``perturbation, layer, metric, value, n``: CKA, cosine, chance cosine),
    ``probe`` (``perturbation, condition, layer, kind, rank, metric, value, n``: each fitted probe in
    ``probes`` on the intact and on the perturbed version of the *same* sentences, gold trees as in
    the module doc) and ``counts`` (``perturbation, n_sentences, n_skipped, n_words``: sentences
    perturbed, sentences skipped, surviving words compared).
    """
    from .structural_probe import evaluate, word_states

    if limit is not None:
        intact = intact.subset(range(min(limit, len(intact))))
    sims, scores, counts = [], [], []
    for kind in kinds:
        items, skipped = perturb(intact.sentences, kind, seed)
        if not items:
            counts.append((kind, 0, skipped, 0))
            continue
        pws = word_states(loaded, [p.sentence for p in items], batch_size=batch_size, progress=progress,
                          desc=f"states ({kind})")
        if pws.dropped:  # perturbed sentences are never longer than their originals
            raise RuntimeError(f"{pws.dropped} perturbed sentences did not fit the model")
        X, Y = paired_states(intact, pws, items)
        sim = state_similarity(X, Y, seed=seed)
        sim.insert(0, "perturbation", kind)
        sims.append(sim)
        base = intact.subset([p.index for p in items])
        for probe in probes:
            for cond, ws in (("intact", base), ("perturbed", pws)):
                t = evaluate(probe, ws)
                t.insert(0, "condition", cond)
                t.insert(0, "perturbation", kind)
                scores.append(t)
        counts.append((kind, len(items), skipped, int(X.shape[1])))
    return {
        "similarity": pd.concat(sims, ignore_index=True) if sims else pd.DataFrame(),
        "probe": pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(),
        "counts": pd.DataFrame(counts, columns=["perturbation", "n_sentences", "n_skipped", "n_words"]),
    }


def shuffle_context(context: str, rng: np.random.Generator, mask: str = "[MASK]") -> str:
    """A cloze context with its words (whitespace-separated) shuffled and ``mask`` kept in place:
    the agreement-under-shuffling variant of Ettinger's (2020) word-order perturbation.
    Contexts with fewer than three words come back unchanged."""
    words = context.split()
    if words.count(mask) != 1:
        raise ValueError(f"context must contain {mask} exactly once: {context!r}")
    at = words.index(mask)
    rest = words[:at] + words[at + 1:]
    if len(rest) >= 2:
        order = np.arange(len(rest))
        while (order == np.arange(len(rest))).all() and len(set(rest)) > 1:
            order = rng.permutation(len(rest))
        rest = [rest[k] for k in order]
    return " ".join(rest[:at] + [mask] + rest[at:])


# ----------------------------------------------------------------------------- notebook 04: findings


def _last(layer: int, layers) -> int:
    """``layer`` among the table's ``layers``; negative counts from the top (``-1`` = last)."""
    layers = sorted(int(x) for x in set(layers))
    return layers[layer] if layer < 0 else layer


def similarity_table(similarity: pd.DataFrame, layer: int = -1) -> pd.DataFrame:
    """CKA, cosine and chance cosine of one layer (``-1`` = last), one row per perturbation."""
    at = _last(layer, similarity["layer"])
    return similarity[similarity["layer"] == at].pivot_table(index="perturbation", columns="metric", values="value")


def probe_table(probe: pd.DataFrame, layer: int) -> pd.DataFrame:
    """The probes' metrics at ``layer`` on intact and perturbed input, one row per perturbation,
    columns ``(metric, condition)``."""
    return probe[probe["layer"] == layer].pivot_table(index="perturbation", columns=["metric", "condition"],
                                                      values="value")


#: last-layer CKA below which the Primer's "not altered" reading is called an overstatement
CHANGED_CKA = 0.9


def findings(similarity: pd.DataFrame, probe: pd.DataFrame, probe_layer: int) -> dict:
    """Per perturbation (from :func:`perturbation_study`'s tables): last-layer CKA, cosine and chance
    cosine, layer-1 CKA, and the UUAS of the ``probe_layer`` distance probe on the intact and the
    perturbed sentences (absent when not scored); plus the perturbation with the lowest last-layer
    CKA (``most_disruptive``). Empty when nothing was perturbed."""
    if similarity.empty:
        return {}
    last = _last(-1, similarity["layer"])
    sim = similarity.set_index(["perturbation", "layer", "metric"])["value"]
    uuas = (probe[(probe["layer"] == probe_layer) & (probe["metric"] == "uuas")]
            .set_index(["perturbation", "condition"])["value"] if len(probe) else pd.Series(dtype=float))
    kinds = {}
    for kind in dict.fromkeys(similarity["perturbation"]):
        k = {"cka_last": float(sim[(kind, last, "cka")]), "cosine_last": float(sim[(kind, last, "cosine")]),
             "cosine_chance_last": float(sim[(kind, last, "cosine_chance")]), "cka_layer1": float(sim[(kind, 1, "cka")])}
        if (kind, "intact") in uuas.index and (kind, "perturbed") in uuas.index:
            k.update(uuas_intact=float(uuas[(kind, "intact")]), uuas_perturbed=float(uuas[(kind, "perturbed")]))
        kinds[kind] = k
    worst = min(kinds, key=lambda kind: kinds[kind]["cka_last"])
    return {"last_layer": last, "probe_layer": probe_layer, "perturbations": kinds, "most_disruptive": worst}


def findings_text(f: dict) -> list[str]:
    """Markdown lines of :func:`findings`: one per perturbation and the check of the Primer's summary."""
    if not f:
        return []
    lines = []
    for kind, k in f["perturbations"].items():
        probe_txt = (f"; the layer-{f['probe_layer']} probe's UUAS goes from {k['uuas_intact']:.3f} (intact) to "
                     f"{k['uuas_perturbed']:.3f}" if "uuas_intact" in k else "")
        lines.append(f"**{kind}**: last-layer CKA {k['cka_last']:.3f}, cosine {k['cosine_last']:.3f} "
                     f"(chance {k['cosine_chance_last']:.3f}); layer-1 CKA {k['cka_layer1']:.3f}{probe_txt}.")
    worst = f["most_disruptive"]
    cka = f["perturbations"][worst]["cka_last"]
    lines.append(f"**The Primer's “not altered” summary, checked on states**: the most disruptive perturbation here is "
                 f"*{worst}* (last-layer CKA {cka:.3f}); "
                 + ("so the representations do change measurably — “not altered” overstates it for this model."
                    if cka < CHANGED_CKA else "yet the representations stay close to the intact ones."))
    return lines
