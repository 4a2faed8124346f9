"""Figures of notebook 04: structural probes by layer and rank, one predicted tree, perturbations.
No statistics here; every function takes a tidy table and returns a matplotlib figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plots import PALETTE
from .structural_probe import METRIC_LABELS


def probe_by_layer(table: pd.DataFrame, metrics=("uuas", "dspr", "root_acc", "nspr")):
    """Hewitt & Manning §4 by layer: one panel per metric, one line per model (``model`` column).

    ``table``: ``model, layer, metric, value``; layer 0 = embeddings (non-contextual baseline)."""
    metrics = [m for m in metrics if m in set(table.metric)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    models = list(dict.fromkeys(table.model))
    colors = dict(zip(models, sns.color_palette(PALETTE, len(models))))
    for ax, metric in zip(axes[0], metrics):
        for model in models:
            d = table[(table.metric == metric) & (table.model == model)].sort_values("layer")
            ax.plot(d.layer, d.value, marker="o", ms=4, color=colors[model], label=model,
                    ls="--" if "control" in model else "-")
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_xticks(sorted(table.layer.unique()))
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def rank_sweep(table: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Metric against the probe's maximum rank (log scale), one panel per metric, one line per model
    and layer (``table``: ``model, layer, metric, rank, value`` from
    :func:`bertology.structural_probe.rank_sweep`); ``reference`` rows (``model, metric, rank, value``)
    are drawn dashed and labelled as references."""
    metrics = list(dict.fromkeys(table.metric))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for (model, layer), d in table[table.metric == metric].groupby(["model", "layer"], sort=False):
            d = d.sort_values("rank")
            ax.plot(d["rank"], d.value, marker="o", ms=4, label=f"{model}, layer {layer}")
        if reference is not None:
            ref = reference[(reference.metric == metric) & reference["rank"].notna()]
            for model, d in ref.groupby("model"):
                ax.plot(d["rank"], d.value, ls="--", color="0.5", marker=".", label=f"{model}, PTB (reference)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("probe maximum rank")
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def tree_arcs(tree: dict, title: str = ""):
    """Gold tree above the words, the probe's minimum spanning tree below (green = also gold,
    red = not in the gold tree); punctuation has no arcs (excluded from UUAS)."""
    words = tree["words"]
    widths = np.array([max(len(w), 2) + 2 for w in words], dtype=float)
    x = np.cumsum(widths) - widths / 2  # word centres, in characters
    fig, ax = plt.subplots(figsize=(max(6.0, 0.085 * widths.sum() + 1.2), 3.6))
    gold = set(map(tuple, tree["gold"]))
    span = x[-1] - x[0] if len(x) > 1 else 1.0
    for (i, j), side in [(e, 1) for e in tree["gold"]] + [(e, -1) for e in tree["predicted"]]:
        h = 0.15 + 0.85 * abs(x[j] - x[i]) / span
        t = np.linspace(0, np.pi, 40)
        color = "tab:blue" if side > 0 else ("tab:green" if (i, j) in gold else "tab:red")
        ax.plot(np.linspace(x[i], x[j], 40), side * h * np.sin(t), color=color, lw=1.6)
    for k, w in enumerate(words):
        ax.text(x[k], 0, w, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8"))
    ax.set_xlim(-1, widths.sum() + 1)
    ax.set_ylim(-1.1, 1.1)
    ax.axis("off")
    ax.text(0, 1.05, "gold tree", color="tab:blue", fontsize=9)
    ax.text(0, -1.1, "probe's tree (green: correct, red: wrong)", color="0.3", fontsize=9)
    ax.set_title(title or f"layer {tree['layer']}: {tree['correct']}/{tree['total']} gold arcs recovered", fontsize=10)
    fig.tight_layout()
    return fig


def perturbation_similarity(table: pd.DataFrame):
    """Per layer, linear CKA and mean cosine between intact and perturbed states of the surviving
    words, one line per perturbation; dotted: the cosine of randomly re-paired words (chance)."""
    kinds = list(dict.fromkeys(table.perturbation))
    colors = dict(zip(kinds, sns.color_palette(PALETTE, len(kinds))))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    for ax, metric, title in [(axes[0], "cka", "linear CKA"), (axes[1], "cosine", "mean cosine")]:
        for kind in kinds:
            d = table[(table.perturbation == kind) & (table.metric == metric)].sort_values("layer")
            ax.plot(d.layer, d.value, marker="o", ms=4, color=colors[kind], label=kind)
            if metric == "cosine":
                c = table[(table.perturbation == kind) & (table.metric == "cosine_chance")].sort_values("layer")
                ax.plot(c.layer, c.value, ls=":", color=colors[kind])
        ax.set_title(title + (" (dotted: random word pairs)" if metric == "cosine" else ""), fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_xticks(sorted(table.layer.unique()))
    axes[0].set_ylim(0, 1.02)
    axes[0].set_ylabel("intact vs perturbed")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def perturbation_probe(table: pd.DataFrame, metrics=("uuas", "dspr")):
    """Probe metrics on intact vs perturbed input (same sentences), per layer and perturbation.

    ``table``: ``perturbation, condition (intact|perturbed), layer, metric, value``."""
    kinds = list(dict.fromkeys(table.perturbation))
    colors = dict(zip(kinds, sns.color_palette(PALETTE, len(kinds))))
    metrics = [m for m in metrics if m in set(table.metric)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for kind in kinds:
            for cond, ls in [("intact", "-"), ("perturbed", "--")]:
                d = table[(table.perturbation == kind) & (table.metric == metric) & (table.condition == cond)]
                d = d.sort_values("layer")
                ax.plot(d.layer, d.value, ls=ls, marker="o" if cond == "intact" else "x", ms=4, color=colors[kind],
                        label=f"{kind}, {cond}")
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)}: intact (solid) vs perturbed (dashed)", fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_xticks(sorted(table.layer.unique()))
        ax.set_ylim(0, 1)
    axes[0, -1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


def agreement_by_attractors(table: pd.DataFrame):
    """Agreement accuracy by number of attractors, one panel per data set, one bar per scorer
    (``table`` from :func:`bertology.minimal_pairs.agreement_accuracy` by dataset and n_attractors);
    the number of scored items is printed on each bar."""
    sets = list(dict.fromkeys(table.dataset))
    fig, axes = plt.subplots(1, len(sets), figsize=(max(4.5, 4.2 * len(sets)), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], sets):
        d = table[table.dataset == name].copy()
        d["n_attractors"] = d["n_attractors"].astype(str)
        order = list(dict.fromkeys(d["n_attractors"]))
        hues = list(dict.fromkeys(d["scorer"]))
        sns.barplot(data=d, x="n_attractors", y="accuracy", hue="scorer", order=order, hue_order=hues, ax=ax,
                    palette=PALETTE)
        # a scorer may lack a level (every item of it out of vocabulary): label only the bars drawn
        counts = d.set_index(["scorer", "n_attractors"])["n"]
        for cont, scorer in zip(ax.containers, hues):
            for bar, x in zip(cont.patches, order):
                if bar is not None and (scorer, x) in counts.index:
                    ax.annotate(f"{int(counts[(scorer, x)])}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                xytext=(0, 1), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.axhline(0.5, ls="--", color="0.4", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("attractors")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, loc="lower left")
    axes[0, 0].set_ylabel("accuracy (correct form scored higher)")
    fig.tight_layout()
    return fig


def blimp_by_phenomenon(table: pd.DataFrame):
    """BLiMP accuracy per phenomenon group (mlm-scoring's 12 groups or BLiMP's ``linguistics_term``, whichever
    :func:`bertology.minimal_pairs.blimp_accuracy` table is given), one bar per scorer; dashed = chance."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    sns.barplot(data=table, x="group", y="accuracy", hue="scorer", ax=ax, palette=PALETTE)
    ax.axhline(0.5, ls="--", color="0.4", lw=1)
    ax.set_xlabel("")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", labelrotation=35, labelsize=8)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
