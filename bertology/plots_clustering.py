"""Figures of head clustering (Clark et al. 2019, Fig. 6): MDS map and dendrogram. No statistics here."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plots import PALETTE, set_style

#: Order of the behaviour legend (labels from ``clustering.head_behaviours``); others follow.
BEHAVIOUR_ORDER = ["[CLS]", "[SEP]", "punctuation", "previous token", "next token", "broad", "other"]
#: The distance axis of :func:`dendrogram` for each ``reduce`` of ``clustering.HeadDistances``.
JS_AXIS_LABELS = {"mean": "mean JS divergence per token (nats)", "sum": "JS divergence summed over tokens (nats)"}


def mds_map(coords: pd.DataFrame, hue: str = "behaviour", annotate: bool = False):
    """Heads in the 2-D MDS embedding of their JS distances, coloured by ``hue``.

    ``coords`` has ``x, y, label`` (from ``HeadDistanceResult.mds``) plus the ``hue`` column,
    e.g. ``behaviour`` merged in from ``head_behaviours`` or ``layer`` (shown 1-indexed).
    ``annotate`` writes each head's ``layer-head`` label next to it.
    """
    set_style()
    d = coords.copy()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    if hue == "layer":  # ordinal: a sequential palette, layers as people read them
        d["layer"] = d["layer"] + 1
        kw = dict(palette="viridis", legend="full")
    else:
        present = list(pd.unique(d[hue]))
        order = [b for b in BEHAVIOUR_ORDER if b in present] + [b for b in present if b not in BEHAVIOUR_ORDER]
        # "other" in grey, so the labelled behaviours stand out
        # the colourblind palette has 10 colours; more categories (many syntactic heads) need tab20
        palette = sns.color_palette(PALETTE if len(order) <= 10 else "tab20", len(order))
        colours = dict(zip([b for b in order if b != "other"], palette))
        colours["other"] = (0.75, 0.75, 0.75)
        kw = dict(hue_order=order, palette={b: colours[b] for b in order})
    sns.scatterplot(data=d, x="x", y="y", hue=hue, s=36, edgecolor="none", alpha=0.85, ax=ax, **kw)
    if annotate:
        for x, y, lab in zip(d["x"], d["y"], d["label"]):
            ax.annotate(lab, (x, y), xytext=(2, 2), textcoords="offset points", fontsize=6, color="0.3")
    ax.set_aspect("equal", adjustable="datalim")  # MDS distances mean the same in both directions
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("attention heads, MDS of Jensen-Shannon distances", fontsize=10)
    ax.legend(fontsize=8, title=hue, title_fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def dendrogram(linkage: np.ndarray, labels: list[str], color_threshold: float | None = None,
               ylabel: str = "JS divergence (nats)"):
    """Dendrogram of the heads' average-linkage clustering (``clustering.head_linkage``); ``ylabel``
    should say whether the distances are summed or averaged over tokens (:data:`JS_AXIS_LABELS`)."""
    from scipy.cluster import hierarchy

    set_style()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.09 * n)), 4.0))
    hierarchy.dendrogram(linkage, labels=list(labels), ax=ax, color_threshold=color_threshold,
                         leaf_rotation=90, leaf_font_size=max(4, min(8, 600 // max(n, 1))))
    ax.set_ylabel(ylabel)
    ax.grid(False, axis="x")
    ax.set_title("attention heads, average-linkage clustering", fontsize=10)
    fig.tight_layout()
    return fig
