"""Surface-level attention patterns (Clark et al. 2019, §3, Figures 1-4).

All statistics are streamed: :class:`AttentionPatterns` is a reducer for
:func:`bertology.extract.extract` and keeps only per-head running sums. Run it at token level
(``level="token"``) to match the paper, which measured attention between word pieces.

The definitions follow the authors' released notebook (clarkkev/attention-analysis,
``General_Analysis.ipynb``, cells "Computing Average Attention" and "Computing Attention Head
Entropies"): every statistic is first averaged over the query positions of one input, then over
inputs, so every input weighs the same. Our token-weighted variant (all positions of all inputs
pooled) is the option ``average="pooled"``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import extract as _extract
from .align import CLS, SEP, Encoding
from .extract import forward
from .fidelity import declare, option_differs
from .labels import head_label  # noqa: F401  (re-exported; the formatter lives in bertology.labels)
from .models import LoadedModel

#: The study names this module declares deviations for (see :mod:`bertology.fidelity`).
STUDIES = ("clark.patterns", "clark.gradients")

_NOTEBOOK = "clarkkev/attention-analysis General_Analysis.ipynb"

#: Tokens counted as punctuation in Clark et al. Fig. 2 ("." and ",").
PUNCT = frozenset({".", ","})

#: How per-head statistics are averaged: ``"per_input"`` (the authors': mean over the query
#: positions of each input, then mean over inputs) or ``"pooled"`` (ours: mean over all query
#: positions of all inputs, so longer inputs weigh more).
AVERAGES = ("per_input", "pooled")

#: Smoothing of attention before its entropy is taken, as in the authors' notebook:
#: p -> (1 - eps) p + eps / n with eps = 1e-4 (n = number of keys of the input).
ENTROPY_SMOOTHING = 1e-4

#: Metric names of :class:`AttentionPatterns`, with what they mean.
PATTERN_METRICS = {
    "to_cls": "mean attention to [CLS]",
    "to_sep": "mean attention to [SEP] (both)",
    "to_punct": "mean attention to '.' and ','",
    "sep_to_sep": "attention from [SEP] tokens to [SEP]",
    "other_to_sep": "attention from other tokens to [SEP]",
    "to_prev": "attention to the previous token (i-1)",
    "to_self": "attention to the current token (i)",
    "to_next": "attention to the next token (i+1)",
    "entropy": "attention entropy (nats)",
    "entropy_from_cls": "entropy of attention from [CLS] (nats)",
    "uniform_entropy": "entropy of uniform attention over the same inputs (nats)",
}

declare("clark.patterns", "average_pooled",
        "§3 averages pool all query positions of all inputs (longer inputs weigh more); the authors average "
        "over the positions of each input, then over inputs (every input weighs the same).",
        kind="option", when=option_differs("average", "per_input"), reference=_NOTEBOOK)
declare("clark.patterns", "entropy_smoothing",
        "Attention entropies are computed after smoothing p -> (1 - {entropy_smoothing}) p + {entropy_smoothing}/n; "
        "the authors smooth with 1e-4.",
        kind="option", when=option_differs("entropy_smoothing", ENTROPY_SMOOTHING), reference=_NOTEBOOK)
declare("clark.patterns", "punct_upos",
        "Attention to punctuation counts the pieces of words tagged UPOS PUNCT (used for a language other than "
        "English); the authors count the tokens '.' and ','.",
        kind="option", when=option_differs("punct", "tokens"), reference=_NOTEBOOK)
declare("clark.patterns", "sep_denominators",
        "[SEP]->[SEP] and other->[SEP] are divided by the number of [SEP] / non-[SEP] queries of each input; "
        "the authors divide by 2 and n-2, the same for their two-segment inputs but not for single segments.",
        kind="option", when=option_differs("segments", 2), reference=_NOTEBOOK)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * logs).sum(-1)


class AttentionPatterns:
    """Reducer: per-head averages of where attention goes (Clark et al. §3, Fig. 2 and 4).

    For one input of n positions with attention A (rows sum to 1), as in the authors' notebook:

    - ``to_X`` (X = [CLS], [SEP], "." or ","; self, previous, next) = (1/n) sum_q sum_{k in X(q)} A[q, k];
      previous is k = q-1, next k = q+1, and the first / last query, which have no such
      neighbour, count with 0 (the denominator is n, not n-1);
    - ``sep_to_sep`` = sum over [SEP] queries of their attention to [SEP] / number of [SEP] queries;
      ``other_to_sep`` likewise over the other queries ([CLS] included);
    - ``entropy`` = (1/n) sum_q H(A'[q]) with A' = (1 - eps) A + eps/n, eps = ``entropy_smoothing``;
      ``entropy_from_cls`` = H(A'[[CLS]]); ``uniform_entropy`` = ln n.

    ``punct_upos`` (one list of UPOS tags per input, words of A then B) counts as punctuation the
    pieces of words tagged ``PUNCT`` instead of the tokens "." and "," (for other languages).

    ``average="per_input"`` (default, the authors') then takes the plain mean over inputs;
    ``average="pooled"`` instead divides the sums over all inputs by the summed denominators
    (a token-weighted mean). Previous means i-1 (the authors' Fig. 2 plotting cell swaps the two
    labels; their Fig. 6 cell uses them the right way round). Entropies are in nats.
    """

    def __init__(self, n_layers: int, n_heads: int, average: str = "per_input",
                 entropy_smoothing: float = ENTROPY_SMOOTHING, punct_upos: list[list[str]] | None = None):
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        if not 0 <= entropy_smoothing < 1:
            raise ValueError(f"entropy_smoothing must be in [0, 1), got {entropy_smoothing!r}")
        shape = (n_layers, n_heads)
        self.average, self.entropy_smoothing = average, float(entropy_smoothing)
        # punct_upos[i]: UPOS of the words of input i (A then B); then punctuation = pieces of PUNCT words
        self.punct_upos = punct_upos
        self.sums = {m: np.zeros(shape) for m in PATTERN_METRICS}
        self.counts = {m: 0 for m in PATTERN_METRICS}
        self.n_inputs = 0

    @property
    def options(self) -> dict:
        """The options of this reducer, for ``run.method("clark.patterns", **options)``."""
        opts = {"average": self.average, "entropy_smoothing": self.entropy_smoothing}
        return opts if self.punct_upos is None else {**opts, "punct": "upos"}

    def _add(self, metric: str, per_head_sum: np.ndarray, denom: int) -> None:
        if denom <= 0:  # e.g. an input without [SEP]: nothing to average
            return
        if self.average == "per_input":
            self.sums[metric] += per_head_sum / denom
            self.counts[metric] += 1
        else:
            self.sums[metric] += per_head_sum
            self.counts[metric] += denom

    def update(self, item: _extract.Item) -> None:
        a = item.attention.astype(np.float64)  # (L, H, T, T)
        e = item.encoding
        n = a.shape[-1]
        kind = np.asarray(e.unit_kind)
        is_cls, is_sep = kind == CLS, kind == SEP
        if self.punct_upos is None:
            labels = e.tokens if n == e.n_tokens else e.unit_labels()
            is_punct = np.array([t in PUNCT for t in labels])
        else:  # unit_word is per piece at token level, per word at word level
            upos = self.punct_upos[item.index]
            is_punct = np.array([w >= 0 and upos[w] == "PUNCT" for w in e.unit_word], dtype=bool)
        self._add("to_cls", a[..., is_cls].sum(-1).sum(-1), n)
        to_sep = a[..., is_sep].sum(-1)  # (L, H, T): per query
        self._add("to_sep", to_sep.sum(-1), n)
        self._add("sep_to_sep", to_sep[..., is_sep].sum(-1), int(is_sep.sum()))
        self._add("other_to_sep", to_sep[..., ~is_sep].sum(-1), int((~is_sep).sum()))
        self._add("to_punct", a[..., is_punct].sum(-1).sum(-1), n)
        idx = np.arange(n)
        self._add("to_prev", a[..., idx[1:], idx[1:] - 1].sum(-1), n)
        self._add("to_self", a[..., idx, idx].sum(-1), n)
        self._add("to_next", a[..., idx[:-1], idx[:-1] + 1].sum(-1), n)
        eps = self.entropy_smoothing
        smooth = (1 - eps) * a + eps / n if eps else a
        self._add("entropy", _entropy(smooth).sum(-1), n)
        self._add("entropy_from_cls", _entropy(smooth[..., is_cls, :]).sum(-1), int(is_cls.sum()))
        self._add("uniform_entropy", np.full(a.shape[:2], n * np.log(n)), n)
        self.n_inputs += 1

    def result(self) -> pd.DataFrame:
        """Tidy table: ``layer, head, metric, value, n`` (layer and head 0-indexed); ``n`` is the
        number of inputs averaged over (``per_input``) or of query positions (``pooled``)."""
        rows = []
        for m, s in self.sums.items():
            c = self.counts[m]
            mean = s / c if c else np.full_like(s, np.nan)
            L, H = mean.shape
            for layer in range(L):
                for head in range(H):
                    rows.append((layer, head, m, float(mean[layer, head]), c))
        return pd.DataFrame(rows, columns=["layer", "head", "metric", "value", "n"])


class KeepExamples:
    """Reducer that keeps the maps of a few chosen inputs (for figures)."""

    def __init__(self, indices):
        self.indices = set(indices)
        self.items: dict[int, _extract.Item] = {}

    def update(self, item: _extract.Item) -> None:
        if item.index in self.indices:
            self.items[item.index] = item

    def result(self) -> dict[int, _extract.Item]:
        return self.items


def notable_heads(patterns: pd.DataFrame) -> pd.DataFrame:
    """One head per behaviour, for the example maps of Clark et al. Fig. 1.

    For each of: to_prev, to_next, to_sep, to_cls, to_punct (highest value) and broad attention
    (highest entropy), the head that shows it most. Columns ``behaviour, layer, head, value, label``.
    """
    rows = []
    wide = patterns.pivot_table(index=["layer", "head"], columns="metric", values="value")
    for behaviour, metric in [
        ("previous token", "to_prev"), ("next token", "to_next"), ("[SEP]", "to_sep"),
        ("[CLS]", "to_cls"), ("punctuation", "to_punct"), ("broad", "entropy"),
    ]:
        (layer, head), value = wide[metric].idxmax(), wide[metric].max()
        rows.append((behaviour, int(layer), int(head), float(value), head_label(layer, head)))
    return pd.DataFrame(rows, columns=["behaviour", "layer", "head", "value", "label"])


def layer_summary(patterns: pd.DataFrame) -> pd.DataFrame:
    """Mean and max over the heads of each layer, per metric (``layer, metric, mean, max``)."""
    g = patterns.groupby(["layer", "metric"])["value"]
    return g.agg(["mean", "max"]).reset_index()


# ----------------------------------------------------------------------------- Fig. 3


@dataclass
class GradientObjective:
    name: str
    description: str


MLM_OBJECTIVE = GradientObjective("mlm", "masked-LM cross-entropy at masked positions (the paper's loss)")
RECON_OBJECTIVE = GradientObjective(
    "reconstruction",
    "substitute objective (the model has no masked-LM head): squared distance between the last-layer "
    "states of masked positions and the same positions' states on the unmasked input",
)

_FIG3 = ("paper §3.2 and Fig. 3 (the authors released no code for Fig. 3: clarkkev/attention-analysis "
         "has none)")
declare("clark.gradients", "objective",
        "Fig. 3 uses a {objective} objective (the model has no masked-LM head): squared distance between the "
        "last-layer states of masked positions and their states on the unmasked input; the paper uses the "
        "masked-LM loss.", kind="objective", when=option_differs("objective", "mlm"), reference=_FIG3)
declare("clark.gradients", "averaging",
        "Fig. 3: the paper gives the gradient magnitude of the masked-LM loss with respect to each attention "
        "weight but not how it was masked or averaged; we replace a fraction mask_prob (15% unless set) of the word pieces of each input "
        "(at least one) by [MASK], take L as the mean loss over every masked piece of the inputs, and average "
        "|dL/dα| over heads and over every (query, key) cell whose key is of the category, pooled over inputs.",
        reference=_FIG3)


def gradient_importance(
    loaded: LoadedModel,
    encodings: list[Encoding],
    objective: str = "auto",
    mask_prob: float = 0.15,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[pd.DataFrame, GradientObjective]:
    """Gradient-based importance of attention to [SEP], punctuation and other tokens
    (Clark et al. 2019, §3.2, Fig. 3): mean |dL/dα_ij| by layer and by the kind of token j.

    The paper defines the quantity as the magnitude of the gradient of the masked-LM loss with
    respect to each attention weight; it does not say how tokens were masked or how the
    magnitudes were averaged, and the authors released no code for Fig. 3. Our choices (declared
    in the register as ``clark.gradients``): masked pieces all become [MASK], and |dL/dα| is
    averaged over heads and over all (query, key) cells of a key category, pooled over inputs.

    ``objective``: ``"mlm"`` (needs an MLM head), ``"reconstruction"`` (works for any encoder),
    or ``"auto"`` (MLM when available). A fraction ``mask_prob`` of the word pieces of each input
    (at least one) is replaced by [MASK], drawn with ``seed``. Returns a tidy table
    ``layer, category, value, n`` and the objective used.
    """
    from tqdm.auto import tqdm

    if objective == "auto":
        objective = "mlm" if loaded.info.has_mlm_head else "reconstruction"
    if objective == "mlm" and not loaded.info.has_mlm_head:
        from .models import MissingHeadError

        raise MissingHeadError(f"{loaded.info.name!r} has no masked-LM head; use objective='reconstruction'")
    if objective not in ("mlm", "reconstruction"):
        raise ValueError(f"objective must be 'auto', 'mlm' or 'reconstruction', not {objective!r}")
    obj = MLM_OBJECTIVE if objective == "mlm" else RECON_OBJECTIVE
    rng = np.random.default_rng(seed)
    device = loaded.device
    L = loaded.info.n_layers
    sums = {c: np.zeros(L) for c in ("[SEP]", "punctuation", "other")}
    counts = {c: np.zeros(L) for c in sums}
    batches = _extract.length_buckets(encodings, batch_size, overhead=_extract.batch_overhead(device))
    picks = {}  # the masked pieces of each input, drawn in the sorted order of the inputs (any cut keeps it)
    for i in [i for batch in batches for i in batch]:
        e = encodings[i]
        words = np.flatnonzero(e.unit_word[e.unit_of_token] >= 0)
        picks[i] = rng.choice(words, size=max(1, int(round(mask_prob * len(words)))), replace=False)
    n_masked = sum(len(p) for p in picks.values())  # L: the mean loss over every masked piece of the study
    for batch in tqdm(batches, desc="gradients", disable=not progress):
        encs = [encodings[i] for i in batch]
        inputs = _extract.collate(encs, device)
        masked = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
        key_cat = torch.zeros_like(inputs["input_ids"])  # 0 pad, 1 sep, 2 punct, 3 other
        for b, (i, e) in enumerate(zip(batch, encs)):
            masked[b, torch.as_tensor(picks[i])] = True
            kinds = np.asarray(e.unit_kind)[e.unit_of_token]
            cat = np.where(kinds == SEP, 1, np.where(np.isin(e.tokens, list(PUNCT)), 2, 3))
            key_cat[b, : e.n_tokens] = torch.as_tensor(cat)
        grads = attention_gradients(loaded, inputs, masked, obj, n_masked=n_masked)
        query_ok = inputs["attention_mask"].bool()  # (B, T)
        for layer, g in enumerate(grads):
            g = g.abs().detach().mean(1)  # mean over heads: (B, T, T)
            for c, code in (("[SEP]", 1), ("punctuation", 2), ("other", 3)):
                sel = query_ok[:, :, None] & (key_cat == code)[:, None, :]
                sums[c][layer] += g[sel].sum().item()
                counts[c][layer] += sel.sum().item()
    rows = [
        (layer, c, sums[c][layer] / counts[c][layer] if counts[c][layer] else np.nan, int(counts[c][layer]))
        for c in sums
        for layer in range(L)
    ]
    return pd.DataFrame(rows, columns=["layer", "category", "value", "n"]), obj


def attention_gradients(loaded: LoadedModel, inputs: dict, masked: torch.Tensor, objective: GradientObjective,
                        n_masked: int | None = None):
    """dL/dα for every layer's attention (tuple of float32 B x H x T x T), for one padded batch.

    ``masked`` (B x T, bool) marks the pieces replaced by [MASK]; the loss is the MLM
    cross-entropy of the original pieces there, or the reconstruction substitute
    (see :data:`RECON_OBJECTIVE`), summed over the masked pieces and divided by ``n_masked``
    (default: this batch's masked pieces, i.e. their mean). A study passes its total, so that
    the gradient at an input does not depend on which inputs share its batch.
    """
    corrupted = dict(inputs, input_ids=inputs["input_ids"].masked_fill(masked, loaded.tokenizer.mask_token_id))
    n_masked = int(masked.sum()) if n_masked is None else n_masked
    # the masked-LM head runs at the masked pieces only (where the loss reads it) where
    # extract.mlm_head knows it; the reconstruction objective needs no head at all
    encoder_only = objective is RECON_OBJECTIVE or _extract.mlm_head(loaded.model) is not None
    with torch.enable_grad():
        out = forward(loaded, corrupted, attention=True, hidden_states=objective is RECON_OBJECTIVE, grad=True,
                      base=encoder_only)
        if objective is MLM_OBJECTIVE:
            rows, cols = masked.nonzero(as_tuple=True)
            logits = (_extract.head_logits(loaded, out.last_hidden_state[rows, cols], grad=True) if encoder_only
                      else out.logits[rows, cols])
            loss = torch.nn.functional.cross_entropy(logits, inputs["input_ids"][rows, cols], reduction="sum") / n_masked
        else:
            # the target in the same precision as the differentiated pass (float16 runs that one in float32)
            clean = forward(loaded, inputs, hidden_states=True, grad=True, base=True).hidden_states[-1].detach().float()
            loss = (out.hidden_states[-1][masked] - clean[masked].clone()).pow(2).mean(-1).sum() / n_masked
        return tuple(g.float() for g in torch.autograd.grad(loss, out.attentions))


# ----------------------------------------------------------------------------- reading the results

#: What Clark et al. (2019) report for BERT-base on 1000 Wikipedia segments (§3), as reference
#: points for a different model and data, not as targets: ``(section, claim, provenance)``, the
#: provenance saying where the claim was read.
CLARK_REFERENCE = [
    ("§3.1, Fig. 1", "Most heads put little attention on the current token; some heads attend almost "
     "entirely to the previous or the next token, mostly in early layers.", "paper §3.1 text"),
    ("§3.2, Fig. 2", "Early heads attend to [CLS]; over half of the attention in layers 6-10 goes to "
     "[SEP]; late layers attend much to periods and commas.", "paper §3.2 text and Fig. 2 (top)"),
    ("§3.2, Fig. 2", "[SEP] tokens attend mostly to [SEP] themselves, as a 'no-op' would.",
     "paper §3.2 text and Fig. 2 (middle)"),
    ("§3.2, Fig. 3", "Gradients of the MLM loss with respect to attention to [SEP] become very small "
     "from layer 5 on: changing that attention barely changes the output.", "paper §3.2 text and Fig. 3"),
    ("§3.3, Fig. 4", "Lower layers have some very broad heads (high entropy); attention from [CLS] in the "
     "last layer is very broad, as it aggregates the whole input for next-sentence prediction.",
     "paper §3.3 text and Fig. 4"),
]


def pattern_findings(patterns: pd.DataFrame, grads: pd.DataFrame | None = None) -> dict:
    """Numbers that answer the paper's claims for this run (all layers/heads 1-indexed)."""
    wide = patterns.pivot_table(index=["layer", "head"], columns="metric", values="value")
    by_layer = wide.groupby(level="layer").mean()
    n_layers = len(by_layer)
    f = {
        "layer_most_to_sep": int(by_layer["to_sep"].idxmax()) + 1,
        "max_layer_mean_to_sep": float(by_layer["to_sep"].max()),
        "layer_most_to_cls": int(by_layer["to_cls"].idxmax()) + 1,
        "layer_most_to_punct": int(by_layer["to_punct"].idxmax()) + 1,
        "mean_to_self": float(wide["to_self"].mean()),
        "heads_prev_over_half": [head_label(*i) for i in wide.index[wide["to_prev"] > 0.5]],
        "heads_next_over_half": [head_label(*i) for i in wide.index[wide["to_next"] > 0.5]],
        "mean_sep_to_sep": float(wide["sep_to_sep"].mean()),
        "mean_other_to_sep": float(wide["other_to_sep"].mean()),
        "mean_entropy_first_layer": float(by_layer["entropy"].iloc[0]),
        "mean_entropy_last_layer": float(by_layer["entropy"].iloc[-1]),
        "cls_entropy_last_layer": float(by_layer["entropy_from_cls"].iloc[-1]),
        "uniform_entropy": float(wide["uniform_entropy"].mean()),
        "n_layers": n_layers,
    }
    if grads is not None:
        g = grads.pivot_table(index="layer", columns="category", values="value")
        ratio = g["[SEP]"] / g["other"]
        f["grad_sep_over_other_by_layer"] = [round(float(r), 3) for r in ratio]
    return f


def describe_findings(f: dict) -> str:
    """Markdown bullets stating what this run shows, from :func:`pattern_findings`."""
    lines = [
        f"- Attention to [SEP] peaks in layer {f['layer_most_to_sep']} "
        f"(mean over its heads {f['max_layer_mean_to_sep']:.2f}); [CLS] draws most attention in layer "
        f"{f['layer_most_to_cls']}, punctuation in layer {f['layer_most_to_punct']}.",
        f"- Mean attention to the current token is {f['mean_to_self']:.2f}. Heads with more than half their "
        f"attention on the previous token: {', '.join(f['heads_prev_over_half']) or 'none'}; on the next "
        f"token: {', '.join(f['heads_next_over_half']) or 'none'}.",
        f"- [SEP] tokens send {f['mean_sep_to_sep']:.2f} of their attention to [SEP] (other tokens: "
        f"{f['mean_other_to_sep']:.2f}).",
        f"- Mean entropy is {f['mean_entropy_first_layer']:.2f} nats in layer 1 and "
        f"{f['mean_entropy_last_layer']:.2f} in layer {f['n_layers']} (uniform attention: "
        f"{f['uniform_entropy']:.2f}); attention from [CLS] in the last layer: {f['cls_entropy_last_layer']:.2f}.",
    ]
    if "grad_sep_over_other_by_layer" in f:
        r = f["grad_sep_over_other_by_layer"]
        lines.append(
            "- Gradient importance of attention to [SEP] relative to other tokens, by layer: "
            + ", ".join(f"{i + 1}: {v:.2f}" for i, v in enumerate(r)) + "."
        )
    return "\n".join(lines)


def key_numbers(f: dict) -> dict[str, float]:
    """Notebook 01's headline numbers from :func:`pattern_findings`."""
    return {"max layer-mean attention to [SEP]": f["max_layer_mean_to_sep"],
            "mean attention to current token": f["mean_to_self"],
            "mean entropy, last layer (nats)": f["mean_entropy_last_layer"]}


def reference_text() -> str:
    """Clark et al.'s claims (:data:`CLARK_REFERENCE`) as a Markdown block, each with where it was read."""
    return ("**Clark et al. (2019) on BERT-base, for reference (different model and data):**\n\n"
            + "\n".join(f"- {ref}: {text} *(source: {source})*" for ref, text, source in CLARK_REFERENCE))
