"""One function per figure type, one seaborn style, PNG + SVG export. No statistics here."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .io import atomic_write_bytes

PALETTE = "colorblind"


def set_style() -> None:
    """The one look of every bertology figure."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight", "svg.fonttype": "none"})


def save_figure(fig, output_dir: str | Path, name: str) -> dict[str, str]:
    """Write ``figures/<name>.png`` and ``.svg`` under ``output_dir`` atomically; return the paths."""
    import io

    out = Path(output_dir) / "figures"
    paths = {}
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
        paths[fmt] = str(atomic_write_bytes(out / f"{name}.{fmt}", buf.getvalue()))
    return paths


def _layer_axis(ax, n_layers: int) -> None:
    ax.set_xticks(range(1, n_layers + 1))
    ax.set_xlabel("layer")


def head_scatter(patterns: pd.DataFrame, metrics: dict[str, str], ncols: int = 3, seed: int = 0):
    """Clark et al. Fig. 2 style: one point per head at its (1-indexed) layer, one panel per metric."""
    n = len(metrics)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False, sharex=True)
    n_layers = int(patterns["layer"].max()) + 1
    rng = np.random.default_rng(seed)
    for ax, (metric, title) in zip(axes.flat, metrics.items()):
        d = patterns[patterns.metric == metric]
        x = d["layer"].to_numpy() + 1 + rng.uniform(-0.18, 0.18, len(d))
        ax.scatter(x, d["value"], s=14, alpha=0.75, color=sns.color_palette(PALETTE)[0], edgecolor="none")
        means = d.groupby("layer")["value"].mean()
        ax.plot(means.index + 1, means.values, color="0.25", lw=1.2, label="layer mean")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, max(1.0, d["value"].max() * 1.05) if "entropy" not in metric else None)
        ax.set_ylabel("avg. attention")
        _layer_axis(ax, n_layers)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    axes.flat[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def entropy_by_layer(patterns: pd.DataFrame):
    """Clark et al. Fig. 4: per-head attention entropy by layer against the uniform baseline,
    and the entropy of attention from [CLS]."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    n_layers = int(patterns["layer"].max()) + 1
    for ax, metric, title in [
        (axes[0], "entropy", "attention entropy, all tokens"),
        (axes[1], "entropy_from_cls", "entropy of attention from [CLS]"),
    ]:
        d = patterns[patterns.metric == metric]
        sns.stripplot(x=d["layer"] + 1, y=d["value"], ax=ax, size=3.5, jitter=0.2, native_scale=True)
        base = patterns[patterns.metric == "uniform_entropy"].groupby("layer")["value"].mean()
        ax.plot(base.index + 1, base.values, "k--", lw=1, label="uniform attention")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("entropy (nats)")
        _layer_axis(ax, n_layers)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def attention_maps(maps: list[tuple[str, np.ndarray]], labels: list[str], ncols: int = 3, max_units: int = 40):
    """Heatmaps of a few heads on one input (rows attend to columns), cf. Clark et al. Fig. 1."""
    n = len(maps)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    k = min(len(labels), max_units)
    size = 0.16 * k + 1.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax, (title, m) in zip(axes.flat, maps):
        sns.heatmap(m[:k, :k], ax=ax, cmap="Blues", vmin=0, vmax=1, cbar=False, square=True,
                    xticklabels=labels[:k], yticklabels=labels[:k])
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    fig.tight_layout()
    return fig


def gradient_by_layer(grads: pd.DataFrame, objective_label: str):
    """Clark et al. Fig. 3: mean |dL/dα| by layer for attention to [SEP], punctuation, other."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    d = grads.assign(layer=grads["layer"] + 1)
    sns.lineplot(data=d, x="layer", y="value", hue="category", marker="o", ax=ax)
    ax.set_ylabel("avg. |gradient| wrt attention")
    ax.set_title(f"gradient-based importance\nobjective: {objective_label}", fontsize=9)
    _layer_axis(ax, int(grads["layer"].max()) + 1)
    fig.tight_layout()
    return fig


def head_view(attention: np.ndarray, labels: list[str], sentence_b_start: int | None = None, decimals: int = 2):
    """Interactive head view of one input's (layers x heads x U x U) attention.

    Returns an ``IPython.display.HTML`` object holding a self-contained view (``views.head_view_html``:
    no external scripts, works offline and in exported reports); values are rounded to ``decimals``.
    """
    from IPython.display import HTML

    from .views import head_view_html

    return HTML(head_view_html(attention, labels, decimals=decimals, sentence_b_start=sentence_b_start))


def model_view(attention: np.ndarray, labels: list[str], decimals: int = 2):
    """Every head of one input as a grid of small maps (``views.model_view_html``), offline-safe."""
    from IPython.display import HTML

    from .views import model_view_html

    return HTML(model_view_html(attention, labels, decimals=decimals))


def relation_heads_vs_baseline(best: pd.DataFrame, max_relations: int = 20):
    """Clark et al. Table 1 as a figure: best head's accuracy per relation against the best
    fixed-offset baseline (``best`` from :func:`bertology.syntax.best_heads`; labels: best head
    ``label`` and baseline offset; relations with their number of arcs ``n``)."""
    d = best.head(max_relations)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(d) + 1.2))
    y = np.arange(len(d))
    pal = sns.color_palette(PALETTE)
    ax.barh(y - 0.2, d["accuracy"], height=0.4, color=pal[0], label="best head")
    ax.barh(y + 0.2, d["baseline_accuracy"], height=0.4, color=pal[7], label="best fixed offset")
    for yi, (acc, head, direction) in enumerate(zip(d["accuracy"], d["label"], d["direction"])):
        ax.text(acc + 0.01, yi - 0.2, f"{head} ({direction})", va="center", fontsize=7)
    for yi, (acc, off) in enumerate(zip(d["baseline_accuracy"], d["baseline_offset"])):
        ax.text(acc + 0.01, yi + 0.2, f"offset {off:+d}", va="center", fontsize=7, color="0.35")
    ax.set_yticks(y, [f"{r} (n={n})" for r, n in zip(d["relation"], d["n"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def attention_with_arcs(maps: list[tuple[str, np.ndarray, list[tuple[int, int]]]], labels: list[str], ncols: int = 2):
    """Word-level maps of chosen heads (rows attend to columns) with gold arcs outlined:
    each ``(title, matrix, [(row, col), ...])`` marks the cells a perfect head would fill (cf. Fig. 5)."""
    from matplotlib.patches import Rectangle

    n = len(maps)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    k = len(labels)
    size = 0.24 * k + 1.6
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax, (title, m, cells) in zip(axes.flat, maps):
        sns.heatmap(m, ax=ax, cmap="Blues", vmin=0, vmax=1, cbar=False, square=True,
                    xticklabels=labels, yticklabels=labels)
        for r, c in cells:
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="crimson", lw=1.4))
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    fig.tight_layout()
    return fig


def head_accuracy_grid(heads: pd.DataFrame, relation: str, direction: str = "dep->head"):
    """Accuracy of every head (layer x head) for one relation, as a heatmap."""
    d = heads[(heads.relation == relation) & (heads.direction == direction)]
    grid = d.pivot(index="layer", columns="head", values="accuracy")
    grid.index, grid.columns = grid.index + 1, grid.columns + 1
    fig, ax = plt.subplots(figsize=(0.42 * grid.shape[1] + 1.5, 0.38 * grid.shape[0] + 1.0))
    sns.heatmap(grid, ax=ax, cmap="viridis", vmin=0, vmax=1, annot=grid.shape[1] <= 16, fmt=".2f",
                annot_kws={"fontsize": 6})
    ax.set_title(f"{relation}, {direction}", fontsize=10)
    fig.tight_layout()
    return fig


def probe_uas(uas: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Clark et al. Table 3 as a figure: UAS of each probe on each model (bars), with the paper's
    BERT-base/WSJ values as reference ticks where a row corresponds (``reference.ours``)."""
    d = uas.assign(system=[p if m == "-" else f"{p} · {m}" for p, m in zip(uas["probe"], uas["model"])])
    if "recipe" in d:  # the authors' training recipe rows (parser_probe.run_parser_probes) are labelled
        d["system"] = [s + (" · authors' recipe" if r == "clark" else "") for s, r in zip(d["system"], d["recipe"])]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(d) + 1.2))
    y = np.arange(len(d))
    ax.barh(y, d["uas"], color=sns.color_palette(PALETTE)[0], height=0.6, label="this run")
    if reference is not None:
        ref = {}
        for r in reference.itertuples():
            for i, (p, m) in enumerate(zip(d["probe"], d["model"])):
                want = r.ours
                if want and (want == p or (want.startswith(p + " on the +random-init") and "random-init" in m)) \
                        and ("random-init" in m) == ("random-init" in want):
                    ref[i] = r.uas
        if ref:
            ax.scatter(list(ref.values()), list(ref.keys()), marker="|", s=300, color="crimson", zorder=3,
                       label="Clark et al. BERT-base, WSJ")
    for yi, v in enumerate(d["uas"]):
        ax.text(v + 0.01, yi, f"{v:.1%}", va="center", fontsize=8)
    ax.set_yticks(y, d["system"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("UAS (punctuation excluded)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
