"""Figures of notebook 06 (numeracy): tokenization of numbers, Wallace et al. (2019) probes,
NumerSense hit@k. One function per figure; no statistics here."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plots import PALETTE

_EMB_ORDER = ("model", "control", "value")


def integer_pieces(ints: pd.DataFrame, summary: pd.DataFrame):
    """Left: pieces per integer over 0..10,000 (log x). Right: share of single-piece numbers and
    mean pieces by number of digits."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    x = ints["value"].to_numpy() + 1
    ax.scatter(x, ints["n_pieces"] + np.random.default_rng(0).uniform(-0.12, 0.12, len(ints)), s=2, alpha=0.35,
               color=sns.color_palette(PALETTE)[0], edgecolor="none", rasterized=True)
    ax.set_xscale("log")
    ax.set_xlabel("integer + 1 (log scale)")
    ax.set_ylabel("word pieces")
    ax.set_yticks(range(1, int(ints["n_pieces"].max()) + 1))
    ax.set_title("pieces per integer", fontsize=10)
    ax = axes[1]
    d = summary.copy()
    ax.bar(d["digits"].astype(str), d["share_single"], color=sns.color_palette(PALETTE)[1], label="single piece")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("digits")
    ax.set_ylabel("share that is one piece")
    ax2 = ax.twinx()
    ax2.plot(d["digits"].astype(str), d["mean_pieces"], "o-", color="0.25", label="mean pieces")
    ax2.set_ylabel("mean pieces")
    ax2.set_ylim(0, max(3.0, float(d["mean_pieces"].max()) * 1.15))
    ax2.grid(False)
    ax.set_title("single-piece share and mean pieces by length", fontsize=10)
    fig.tight_layout()
    return fig


def decimal_pieces(decs: pd.DataFrame):
    """Pieces per decimal over 0.00..9.99 and the count of pieces after the point."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    counts = decs["n_pieces"].value_counts().sort_index()
    axes[0].bar(counts.index.astype(str), counts.values / len(decs), color=sns.color_palette(PALETTE)[0])
    axes[0].set_xlabel("word pieces per decimal")
    axes[0].set_ylabel("share of decimals")
    axes[0].set_title(f"{len(decs)} decimals {decs['number'].iloc[0]}–{decs['number'].iloc[-1]}", fontsize=10)
    frac = decs["fraction_pieces"].value_counts().sort_index()
    axes[1].bar(frac.index.astype(str), frac.values / len(decs), color=sns.color_palette(PALETTE)[2])
    axes[1].set_xlabel("pieces after the decimal point")
    axes[1].set_title("where similar decimals part ways", fontsize=10)
    fig.tight_layout()
    return fig


def probe_results(summary: pd.DataFrame, labels: dict[str, str] | None = None):
    """Wallace et al. (2019) Table 4 as a figure: one panel per task, mean ± std over seeds
    against the range's upper end (log x), one line per embedding."""
    tasks = [t for t in ("list_max", "decoding", "addition") if t in set(summary["task"])]
    titles = {"list_max": "list maximum (accuracy, chance 0.2)", "decoding": "decoding (RMSE, lower is better)",
              "addition": "addition (RMSE, lower is better)"}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), squeeze=False)
    pal = sns.color_palette(PALETTE)
    embs = [e for e in _EMB_ORDER if e in set(summary["embedding"])] + sorted(
        set(summary["embedding"]) - set(_EMB_ORDER))
    for ax, task in zip(axes[0], tasks):
        d = summary[summary["task"] == task]
        for i, e in enumerate(embs):
            de = d[d["embedding"] == e].sort_values("range_max")
            if de.empty:
                continue
            name = (labels or {}).get(e, e)
            ax.errorbar(de["range_max"] + 1, de["mean"], yerr=de["std"], marker="o", capsize=3, color=pal[i],
                        label=name)
        ax.set_xscale("log")
        if task != "list_max":
            ax.set_yscale("log")
        else:
            ax.axhline(0.2, color="0.5", ls="--", lw=1)
            ax.set_ylim(0, 1.02)
        ax.set_xticks(sorted(set(d["range_max"] + 1)))
        ax.set_xticklabels([f"[0,{r}]" for r in sorted(set(d["range_max"]))])
        ax.set_xlabel("integer range (interpolation)")
        ax.set_title(titles[task], fontsize=10)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def decoding_scatter(preds: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Wallace et al. (2019) Fig. 1 style: decoded value against the true value of held-out numbers,
    one panel per embedding."""
    n = len(preds)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False, sharey=True)
    for ax, (name, (true, pred)) in zip(axes[0], preds.items()):
        ax.scatter(true, pred, s=8, alpha=0.6, edgecolor="none")
        lo, hi = float(np.min(true)), float(np.max(true))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("true value")
    axes[0][0].set_ylabel("decoded value")
    fig.tight_layout()
    return fig


def numersense_hits(metrics: pd.DataFrame):
    """Hit@k of the gold number word per scorer, with the uniform-guess level."""
    d = metrics[metrics["metric"].str.startswith("hit@")]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.barplot(data=d, x="metric", y="value", hue="label", ax=ax, palette=PALETTE)
    for i, (_, r) in enumerate(d.drop_duplicates("metric").iterrows()):
        ax.plot([i - 0.4, i + 0.4], [r["chance"], r["chance"]], "k--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_ylabel("share of probes (dashed: uniform guess)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
