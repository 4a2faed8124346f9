"""Figures of head importance and pruning (Michel et al. 2019). No statistics here."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plots import PALETTE, set_style


def importance_vs_ablation(heads: pd.DataFrame, metric_name: str, rho: float | None = None):
    """One point per head: gradient importance (x) against the metric lost when the head alone is
    removed (y), coloured by layer (1-indexed). ``heads`` from ``pruning.heads_table``."""
    set_style()
    d = heads.assign(layer=heads["layer"] + 1)
    fig, ax = plt.subplots(figsize=(5.8, 4.4))
    sns.scatterplot(data=d, x="importance", y="ablation_drop", hue="layer", palette="viridis", s=34,
                    edgecolor="none", legend="full", ax=ax)
    ax.axhline(0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("gradient importance  Σ|∂L/∂ξ_h| over tokens (Michel)")
    ax.set_ylabel(f"drop in {metric_name}\nwhen only this head is removed")
    if rho is not None:
        ax.set_title(f"Spearman ρ = {rho:.2f}", fontsize=10)
    ax.legend(title="layer", fontsize=8, title_fontsize=8, loc="upper left")
    return fig


def head_grids(heads: pd.DataFrame, columns: dict[str, str]):
    """Layer x head heatmaps (1-indexed), one panel per column of ``heads`` (name -> title)."""
    set_style()
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    for ax, (col, title) in zip(axes.flat, columns.items()):
        grid = heads.pivot(index="layer", columns="head", values=col)
        grid.index, grid.columns = grid.index + 1, grid.columns + 1
        lim = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
        diverging = (grid.to_numpy() < 0).any()
        sns.heatmap(grid, ax=ax, cmap="RdBu_r" if diverging else "rocket_r",
                    vmin=-lim if diverging else 0, vmax=lim, cbar_kws={"shrink": 0.8})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.tight_layout()
    return fig


def pruning_curves(curves: pd.DataFrame, base: float, metric_name: str, levels=(0.9, 0.95)):
    """Metric against the fraction of heads removed, one line per order (Michel Fig. 3 style).

    ``curves`` has ``order, fraction, metric`` and optionally ``seed`` (random orders: mean line
    with a band spanning the seeds)."""
    set_style()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    orders = list(pd.unique(curves["order"]))
    colours = dict(zip(orders, sns.color_palette(PALETTE, len(orders))))
    for order in orders:
        d = curves[curves.order == order]
        g = d.groupby("fraction")["metric"]
        mean = g.mean()
        ax.plot(mean.index * 100, mean.values, marker="o", ms=3.5, color=colours[order], label=order)
        if g.size().max() > 1:
            ax.fill_between(mean.index * 100, g.min().values, g.max().values, color=colours[order], alpha=0.2, lw=0)
    for level in levels:
        ax.axhline(level * base, color="0.45", lw=0.8, ls="--")
        ax.annotate(f"{level:.0%} of unpruned", (0, level * base), xytext=(2, 2), textcoords="offset points",
                    fontsize=7, color="0.35")
    ax.set_xlabel("heads removed (%)")
    ax.set_ylabel(metric_name)
    ax.legend(fontsize=8)
    return fig


def layers_vs_heads(table: pd.DataFrame, metric_name: str):
    """Metric against parameters removed (millions) for whole layers vs the same number of heads."""
    set_style()
    d = table.assign(params_m=table["params_removed"] / 1e6)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in [(axes[0], "heads_removed", "attention heads removed"), (axes[1], "params_m", "parameters removed (millions)")]:
        sns.lineplot(data=d, x=x, y="metric", hue="strategy", marker="o", ax=ax)
        ax.set_xlabel(label)
        ax.set_ylabel(metric_name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
