"""Figures of notebooks 05 (semantic roles, Ettinger 2020) and 07 (world knowledge: LAMA, Forbes
et al. 2019). One function per figure; statistics live in ``semantic_roles`` and ``knowledge``."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plots import PALETTE

SOURCE_NAMES = {"mlm": "model MLM head", "readout": "fitted readout", "control": "random-init control"}


def _source_label(src: str, labels: dict | None = None) -> str:
    return (labels or {}).get(src, SOURCE_NAMES.get(src, src))


def short_labels(scorers) -> dict[str, str]:
    """Legend names per source: "model MLM head", "fitted readout (layer k)", "random-init control"."""
    out = {}
    for s in scorers:
        name = SOURCE_NAMES.get(s.source, s.source)
        if s.source == "readout" and getattr(s, "layer", None) is not None:
            name = f"fitted readout (layer {s.layer})"
        out[s.source] = name
    return out


def _legend_right(ax):
    if ax.get_legend():
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def _bars(ax, df: pd.DataFrame, x: str, y: str, hue: str, order=None, hue_order=None, chance: float | None = None):
    sns.barplot(data=df, x=x, y=y, hue=hue, order=order, hue_order=hue_order, ax=ax, palette=PALETTE,
                errorbar=None)
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.2f", fontsize=7, padding=1)
    if chance is not None:
        ax.axhline(chance, color="0.3", ls="--", lw=1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("")


def ettinger_overview(summary: pd.DataFrame, labels: dict | None = None):
    """Ettinger (2020) diagnostics at a glance: accuracy@1/@5 and sensitivity per suite, one bar per
    source (model MLM / fitted readout / random-init control). Original (unperturbed) contexts."""
    d = summary[summary["variant"] == "original"].copy()
    d["source"] = d["source"].map(lambda s: _source_label(s, labels))
    metrics = ["accuracy@1", "accuracy@5", "sensitivity: expected vs both", "sensitivity: canonical vs reversed",
               "sensitivity: affirmative", "sensitivity: negated"]
    d = d[d["metric"].isin(metrics)]
    d["metric"] = d["metric"].str.replace("sensitivity: ", "sens.: ")
    suites = [s for s in ("CPRAG", "ROLE", "NEG-SIMP", "NEG-NAT") if s in set(d["suite"])]
    fig, axes = plt.subplots(1, len(suites), figsize=(4.2 * len(suites), 3.6), squeeze=False, sharey=True)
    for ax, suite in zip(axes[0], suites):
        g = d[d["suite"] == suite]
        _bars(ax, g, "metric", "value", "source", order=[m for m in pd.unique(g["metric"])])
        ax.set_title(suite, fontsize=10)
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
        ax.set_ylabel("share of items")
        if ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    _legend_right(axes[0][-1])
    fig.tight_layout()
    return fig


def _perturbation_panels(summary: pd.DataFrame, suite: str, variants: tuple, sensitivity: tuple, labels):
    """accuracy@5 and one sensitivity metric of ``suite`` per perturbation variant, side by side."""
    metric, title = sensitivity
    d = summary[(summary["suite"] == suite) & summary["metric"].isin(["accuracy@5", metric])].copy()
    d["source"] = d["source"].map(lambda s: _source_label(s, labels))
    order = [v for v in variants if v in set(d["variant"])]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
    for ax, (m, t) in zip(axes, [("accuracy@5", "accuracy@5"), (metric, title)]):
        _bars(ax, d[d["metric"] == m], "variant", "value", "source", order=order)
        ax.set_title(f"{suite} {t}", fontsize=10)
        ax.set_ylabel("share of items")
    if axes[0].get_legend():
        axes[0].get_legend().remove()
    _legend_right(axes[1])
    fig.tight_layout()
    return fig


def role_perturbations(summary: pd.DataFrame, labels: dict | None = None):
    """Ettinger's ROLE argument removals (object noun -> "one", subject noun -> "other", both):
    accuracy@5 and sensitivity (canonical above role-reversed) per variant."""
    return _perturbation_panels(summary, "ROLE", ("original", "object removed", "subject removed", "both removed"),
                                ("sensitivity: canonical vs reversed", "sensitivity (canonical above reversed)"), labels)


def cprag_perturbations(summary: pd.DataFrame, labels: dict | None = None):
    """Ettinger's perturbations: CPRAG accuracy@5 and sensitivity under shuffled / truncated contexts (shuffled
    variants: mean over the draws in ``summary``, whose ``sd`` column gives their spread)."""
    return _perturbation_panels(summary, "CPRAG", ("original", "shuffled", "truncated", "shuffled+truncated"),
                                ("sensitivity: expected vs both", "sensitivity (expected above both)"), labels)


def selectional_agreement(summary: pd.DataFrame, agreement: pd.DataFrame, labels: dict | None = None):
    """Our selectional-preference suite. Left: how often the model ranks each pair in the
    expected order (chance 0.5) and the full order (chance 1/6). Right: where each object class
    lands among the three (1 = most probable), for the first source."""
    d = summary[summary["metric"] != "mean Kendall tau"].copy()
    d["source"] = d["source"].map(lambda s: _source_label(s, labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    _bars(axes[0], d, "metric", "value", "source", chance=0.5)
    axes[0].tick_params(axis="x", labelrotation=15, labelsize=8)
    axes[0].set_ylabel("share of verbs")
    axes[0].set_title("agreement with typical > atypical > implausible", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper right")
    src = agreement["source"].iloc[0]
    a = agreement[agreement["source"] == src].dropna(subset=["kendall_tau"])
    counts = np.zeros((3, 3))
    for i, c in enumerate(("typical", "atypical", "implausible")):
        for r in (1, 2, 3):
            counts[i, r - 1] = (a[f"rank_{c}"] == r).mean() if len(a) else np.nan
    sns.heatmap(counts, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=axes[1],
                xticklabels=["1st", "2nd", "3rd"], yticklabels=["typical", "atypical", "implausible"])
    axes[1].set_xlabel("model's rank among the three")
    axes[1].set_title(f"{_source_label(src, labels)}, {len(a)} verbs", fontsize=9)
    fig.tight_layout()
    return fig


def lama_precision(macro: pd.DataFrame, per_relation: pd.DataFrame, labels: dict | None = None, k: int = 1):
    """Petroni et al. (2019) Table 2 style: P@1 and P@10 per corpus (macro over relations) and,
    right, P@``k`` of each T-REx relation, sorted."""
    d = macro.copy()
    d["source"] = d["source"].map(lambda s: _source_label(s, labels))
    d["what"] = d["corpus"] + " P@" + d["k"].astype(str)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.2, 1.6]})
    _bars(axes[0], d, "what", "value", "source")
    axes[0].set_ylabel("mean precision (macro over relations)")
    axes[0].tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[0].set_title("factual cloze per corpus", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper right")
    r = per_relation[(per_relation["k"] == k) & (per_relation["corpus"] == "T-REx")].copy()
    if r.empty:
        r = per_relation[per_relation["k"] == k].copy()
    r["source"] = r["source"].map(lambda s: _source_label(s, labels))
    order = (r[r["source"] == r["source"].iloc[0]].sort_values("precision", ascending=False)["relation"].tolist()
             if len(r) else [])
    sns.barplot(data=r, x="relation", y="precision", hue="source", order=order, ax=axes[1], palette=PALETTE,
                errorbar=None)
    axes[1].tick_params(axis="x", labelrotation=90, labelsize=7)
    axes[1].set_ylabel(f"P@{k}")
    axes[1].set_ylim(0, max(0.05, float(r["precision"].max()) * 1.1 if len(r) else 0.05))
    axes[1].set_xlabel("")
    axes[1].set_title(f"P@{k} per relation ({r['corpus'].iloc[0] if len(r) else ''})", fontsize=10)
    if axes[1].get_legend():
        axes[1].get_legend().remove()
    fig.tight_layout()
    return fig


def negation_effects(macro: pd.DataFrame, labels: dict | None = None):
    """Kassner & Schütze (2020): per corpus, how often the negated query keeps the original top-1
    answer, still names the true object, and how often a misprime takes over."""
    d = macro.copy()
    d["source"] = d["source"].map(lambda s: _source_label(s, labels))
    metrics = list(pd.unique(d["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], metrics):
        _bars(ax, d[d["metric"] == m], "corpus", "value", "source")
        ax.set_title(m, fontsize=9)
        ax.set_ylabel("share of facts (macro over relations)")
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
        if ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    _legend_right(axes[0][-1])
    fig.tight_layout()
    return fig


def forbes_summary(scores: pd.DataFrame):
    """Forbes et al. (2019) Table 3 style: macro F1 per task and category for each system (probe on
    the model, probe on the random-init control, majority baseline, human experts). The question
    it answers: are properties and affordances of objects learnable while the affordance-property
    relation (AP) is not?"""
    d = scores[scores["category"] != "micro"].copy()
    d["column"] = d["task"].str.replace("situated-", "sit. ").str.replace("abstract-", "abs. ") + "\n" + d["category"]
    order = list(pd.unique(d["column"]))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    _bars(ax, d, "column", "value", "system", order=order)
    ax.set_ylabel("macro F1")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.set_title("physical commonsense: object-property (OP), object-affordance (OA), affordance-property (AP)", fontsize=10)
    fig.tight_layout()
    return fig


def forbes_layers(probe: pd.DataFrame, labels: dict | None = None):
    """Validation macro F1 (mean of a task's two categories) at every probed layer, per task and
    source (the curve the test layer is chosen from)."""
    t = probe[(probe["split"] == "val") & (probe["category"] != "micro")]
    d = t.groupby(["source", "task", "layer"], as_index=False)["value"].mean()
    d["source"] = d["source"].map(lambda s: _source_label(s, labels))
    tasks = list(pd.unique(d["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.3 * len(tasks), 3.0), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        g = d[d["task"] == task]
        sns.lineplot(data=g, x="layer", y="value", hue="source", marker="o", ax=ax, palette=PALETTE)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel("macro F1 (validation)")
        ax.set_ylim(0, 1)
        if ax is not axes[0][0] and ax.get_legend():
            ax.get_legend().remove()
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
