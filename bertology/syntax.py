"""Attention heads that track dependency relations (Clark et al. 2019, §4.1, Table 1, Fig. 5).

For each head and each relation, a head "predicts" the syntactic head of a dependent as the word
the dependent attends to most (word-level attention; the word itself, [CLS] and [SEP] excluded),
and, in the other direction, the dependent of a head word as the word the *head* attends to most.
A relation's best head is compared with the best fixed-offset baseline (always predict the word
at offset -3..+3). We run it on Universal Dependencies; the paper used Stanford Dependencies
on the WSJ, so relation names differ (see :data:`UD_TO_STANFORD`).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from .attention import head_label
from .data import Sentence
from .extract import Item

DIRECTIONS = ("dep->head", "head->dep")
OFFSETS = (-3, -2, -1, 1, 2, 3)
ALL = "all"

#: UD relation -> the Stanford Dependencies relation Clark et al. report, where one corresponds.
UD_TO_STANFORD = {
    "obj": "dobj",
    "compound": "nn",
    "nmod:poss": "poss",
    "aux:pass": "auxpass",
    "nsubj": "nsubj",
    "det": "det",
    "amod": "amod",
    "advmod": "advmod",
    "aux": "aux",
    "ccomp": "ccomp",
    "mark": "mark",
    "compound:prt": "prt",
    "case": "prep (UD attaches prepositions to the noun, SD to the verb/noun they modify)",
    "obl": "pobj (approx.: UD's obl/nmod head is the noun that SD calls the object of the preposition)",
    "nmod": "pobj (approx., see obl)",
}

#: Clark et al. (2019), Table 1: best BERT-base head per relation on WSJ (Stanford Dependencies),
#: accuracy (%) and the best fixed-offset baseline (%, offset). Transcribed from the published
#: table; a reference on a different treebank and relation scheme, not a target.
CLARK_TABLE1 = pd.DataFrame(
    [
        ("All", "7-6", 34.5, 26.3, 1),
        ("prep", "7-4", 66.7, 61.8, -1),
        ("pobj", "9-6", 76.3, 34.6, -2),
        ("det", "8-11", 94.3, 51.7, 1),
        ("nn", "4-10", 70.4, 70.2, 1),
        ("nsubj", "8-2", 58.5, 45.5, 1),
        ("amod", "4-10", 75.6, 68.3, 1),
        ("dobj", "8-10", 86.8, 40.0, -2),
        ("advmod", "7-6", 48.8, 40.2, 1),
        ("aux", "4-10", 81.1, 71.5, 1),
        ("poss", "7-6", 80.5, 47.7, 1),
        ("auxpass", "4-10", 82.5, 40.5, 1),
        ("ccomp", "8-1", 48.8, 12.4, -2),
        ("mark", "8-2", 50.7, 14.5, 2),
        ("prt", "6-7", 99.1, 91.4, -1),
    ],
    columns=["relation_sd", "head", "accuracy", "baseline_accuracy", "baseline_offset"],
)


def relation_of(deprel: str, keep_subtypes: bool = True) -> str:
    """UD relation label; ``keep_subtypes=False`` folds ``nmod:poss`` into ``nmod``."""
    return deprel if keep_subtypes else deprel.split(":")[0]


class RelationHeads:
    """Reducer: per relation, per head, per direction, how often the most-attended word is right.

    ``sentences[item.index]`` must be the gold sentence of each input (single-segment inputs).
    Arcs to ROOT have no head word and are skipped, as are arcs that lost a word to truncation.
    """

    def __init__(self, sentences: list[Sentence], n_layers: int, n_heads: int, keep_subtypes: bool = True):
        self.sentences = sentences
        self.shape = (n_layers, n_heads)
        self.keep_subtypes = keep_subtypes
        self.correct = defaultdict(lambda: np.zeros((2, n_layers, n_heads), dtype=np.int64))
        self.offset_correct = defaultdict(lambda: np.zeros(len(OFFSETS), dtype=np.int64))
        self.count = defaultdict(int)

    def update(self, item: Item) -> None:
        sent = self.sentences[item.index]
        units = item.encoding.word_units
        n = len(units)
        a = item.attention[:, :, units][:, :, :, units].astype(np.float64)  # words only: (L, H, n, n)
        idx = np.arange(n)
        a[:, :, idx, idx] = -np.inf  # a word attending to itself predicts nothing
        most = a.argmax(-1)  # (L, H, n): most-attended other word of each word
        most[a.max(-1) <= 0] = -1  # all attention on itself/[CLS]/[SEP]: no prediction, not a tie-break
        deps = np.array([d for d in range(n) if 0 < sent.heads[d] <= n], dtype=np.int64)
        if len(deps) == 0:
            return
        gold = np.array([sent.heads[d] - 1 for d in deps])
        dep_to_head = most[:, :, deps] == gold  # (L, H, arcs)
        head_to_dep = most[:, :, gold] == deps
        rels = [relation_of(sent.deprels[d], self.keep_subtypes) for d in deps]
        offsets = gold[:, None] - deps[:, None] == np.array(OFFSETS)[None, :]  # (arcs, offsets)
        for rel in set(rels) | {ALL}:
            sel = np.ones(len(deps), bool) if rel == ALL else np.array([r == rel for r in rels])
            c = self.correct[rel]
            c[0] += dep_to_head[:, :, sel].sum(-1)
            c[1] += head_to_dep[:, :, sel].sum(-1)
            self.offset_correct[rel] += offsets[sel].sum(0)
            self.count[rel] += int(sel.sum())

    def result(self) -> pd.DataFrame:
        """Tidy: ``relation, layer, head, direction, correct, count, accuracy`` (0-indexed)."""
        rows = []
        L, H = self.shape
        for rel, c in self.correct.items():
            n = self.count[rel]
            for d, direction in enumerate(DIRECTIONS):
                for layer in range(L):
                    for head in range(H):
                        k = int(c[d, layer, head])
                        rows.append((rel, layer, head, direction, k, n, k / n))
        return pd.DataFrame(rows, columns=["relation", "layer", "head", "direction", "correct", "count", "accuracy"])

    def baselines(self) -> pd.DataFrame:
        """Tidy: ``relation, offset, correct, count, accuracy`` for every fixed offset."""
        rows = []
        for rel, c in self.offset_correct.items():
            n = self.count[rel]
            rows += [(rel, o, int(k), n, k / n) for o, k in zip(OFFSETS, c)]
        return pd.DataFrame(rows, columns=["relation", "offset", "correct", "count", "accuracy"])


def best_heads(heads: pd.DataFrame, baselines: pd.DataFrame, min_count: int = 100) -> pd.DataFrame:
    """Clark et al. Table 1: per relation with at least ``min_count`` arcs, the best head (either
    direction) and the best offset baseline, sorted by frequency. Heads printed as ``layer-head``."""
    h = heads[heads["count"] >= min_count]
    best = h.loc[h.groupby("relation")["accuracy"].idxmax()]
    base = baselines.loc[baselines.groupby("relation")["accuracy"].idxmax()].set_index("relation")
    out = pd.DataFrame({
        "relation": best["relation"].values,
        "count": best["count"].values,
        "head": [head_label(layer, head) for layer, head in zip(best["layer"], best["head"])],
        "layer": best["layer"].values,
        "head_index": best["head"].values,
        "direction": best["direction"].values,
        "accuracy": best["accuracy"].values,
        "baseline_offset": base.loc[best["relation"], "offset"].values,
        "baseline_accuracy": base.loc[best["relation"], "accuracy"].values,
    })
    out["stanford"] = out["relation"].map(UD_TO_STANFORD).fillna("")
    return out.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)  # "all" first


def gold_arcs(sentence: Sentence) -> list[tuple[int, int, str]]:
    """``(dependent, head, relation)`` with 0-indexed words; arcs to ROOT left out (for figures)."""
    return [(d, h - 1, r) for d, (h, r) in enumerate(zip(sentence.heads, sentence.deprels)) if h > 0]


def syntactic_heads(best: pd.DataFrame, margin: float = 0.1) -> dict[tuple[int, int], str]:
    """Heads that beat their relation's best offset baseline by ``margin`` (absolute accuracy),
    as ``{(layer, head): "syntax: rel"}``; a head best for several relations keeps the most frequent."""
    out: dict[tuple[int, int], str] = {}
    good = best[(best.relation != ALL) & (best.accuracy - best.baseline_accuracy >= margin)]
    for r in good.sort_values("count", ascending=False).itertuples():
        out.setdefault((int(r.layer), int(r.head_index)), f"syntax: {r.relation}")
    return out
