"""Head importance and pruning (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?").

A *task* turns the model into one scalar metric (higher is better) and one differentiable loss.
Every head carries a gate ξ_h (``interventions.masked_heads``, which multiplies the head's attention
probabilities, hence its output, as the authors' ``mask_heads`` does). The importance of a head
is a first-order estimate of what removing it costs, got for all heads from one forward +
backward pass per batch (Michel §4.1). By default it is the quantity of the authors' released
code (``calculate_head_importance`` in ``examples/classifier_eval.py`` of their
pytorch-pretrained-BERT fork, branch ``paul``): the gate is taken per *token position* of each
example, ∂L/∂ξ_{h,x,t} = ⟨ctx_{h,x,t}, ∂L/∂ctx_{h,x,t}⟩ (ctx: the head's output at t), and
I_h = Σ_x Σ_t |∂L/∂ξ_{h,x,t}| / N, the absolute value taken *before* anything is summed, so
opposite-sign contributions of different tokens and examples never cancel. The importance is
scored on the training split and the pruned model is evaluated on the dev split, as their
``run_classifier.py --do_prune`` does. The oracle is leave-one-head-out ablation (one forward
pass over the data per head). ``prune_heads`` removes heads physically (smaller matrices),
because transformers 5.x no longer has ``prune_heads`` on BERT.
"""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .align import pooling_matrices
from .extract import base_of, batch_overhead, collate, encode_inputs, forward, length_buckets, logits_at
from .fidelity import declare, option_differs
from .interventions import (captured_heads, layer_stack, masked_heads, recorded_layers, resumed_at, set_head_mask,
                            skipped_layers)
from .labels import head_label
from .models import LoadedModel, MissingHeadError, UnsupportedModelError
from .profiling import synchronize, timed

TASKS = ("mlm", "upos", "embedding")

#: The study names this module declares deviations for (see :mod:`bertology.fidelity`).
STUDIES = ("michel.importance", "michel.pruning")

#: Where the authors' definitions were read.
_REPO = "pmichel31415/are-16-heads-really-better-than-1"
_FORK = "pmichel31415/pytorch-pretrained-BERT (branch paul)"
_IMPORTANCE_CODE = f"{_FORK} examples/classifier_eval.py calculate_head_importance"
_PRUNE_CODE = f"{_FORK} examples/run_classifier.py (--do_prune) and examples/pruning.py"
_SCRIPT = f"{_REPO} experiments/BERT/heads_pruning.sh, prepare_task.sh and README.md"

#: Where the absolute value of the head-gate gradient is taken before summing:
#: ``"token"`` (the authors' code: per token position of each example), ``"example"`` (per input,
#: one gate for the whole input: Michel eq. for I_h read with x = one sentence), ``"batch"``
#: (the gradient of a batch-mean loss, so opposite-sign contributions of the examples cancel).
ABS_AT = ("token", "example", "batch")

#: Pruning step of the authors' BERT script: ``--prune_percent `seq 5 5 100``` (heads_pruning.sh).
PRUNE_STEP = 0.05

declare("michel.importance", "objective_embedding",
        "Importance and pruning are measured against the cosine between the pruned and the unpruned mean-pooled "
        "sentence embedding (our default for a model without a masked-LM head, such as MiniLM); its gradient loss is a fixed "
        "Gaussian projection u·e/|e| of the normalised embedding (1 - cos has zero gradient at the unpruned model). "
        "The authors prune BERT-base fine-tuned on MNLI against its classification cross-entropy and accuracy.",
        kind="objective", when=lambda o: o.get("task") == "embedding", reference=_SCRIPT)
declare("michel.importance", "objective_mlm",
        "Importance and pruning are measured against the masked-LM loss and masked-token accuracy of the "
        "pre-trained model (15% of word pieces masked); the authors prune BERT-base fine-tuned on MNLI against its "
        "classification cross-entropy and accuracy.",
        kind="objective", when=lambda o: o.get("task") == "mlm", reference=_SCRIPT)
declare("michel.importance", "objective_upos",
        "Importance and pruning are measured against a linear UPOS probe trained on the unpruned model's last layer "
        "(cross-entropy, accuracy); the authors prune BERT-base fine-tuned on MNLI against its classification "
        "cross-entropy and accuracy.",
        kind="objective", when=lambda o: o.get("task") == "upos", reference=_SCRIPT)
declare("michel.importance", "abs_at",
        "Importance takes |∂L/∂ξ_h| once per {abs_at} (one gate per head for the whole {abs_at}), so contributions "
        "of opposite sign within a {abs_at} cancel; the authors' code takes the absolute value per token position "
        "of each example, then sums.",
        kind="option", when=option_differs("abs_at", "token"), reference=_IMPORTANCE_CODE)
declare("michel.importance", "split",
        "Importance is scored on the {importance_split} sentences, the ones the pruned model is evaluated on; the "
        "authors score it on the training set and evaluate pruning on the dev set.",
        kind="option", when=option_differs("importance_split", "train"), reference=_PRUNE_CODE)
declare("michel.importance", "normalize",
        "Heads are ranked by raw importance; the authors' BERT pruning command (--normalize_pruning_by_layer) "
        "divides each layer's scores by their L2 norm first.",
        kind="option", when=option_differs("normalize", True), reference=_SCRIPT)
declare("michel.importance", "amount",
        "Importance is estimated on {n_importance} training sentences; the authors use the whole training set "
        "(--compute_head_importance_on_subset 1.0).", kind="data",
        when=lambda o: o.get("importance_split", "train") == "train", reference=_PRUNE_CODE)
declare("michel.pruning", "step",
        "Pruning curves remove heads in steps of {step:.0%} of all heads; the authors' script steps by 5% "
        "(--prune_percent 5 10 ... 100).", kind="option", when=option_differs("step", PRUNE_STEP), reference=_SCRIPT)
declare("michel.pruning", "recompute",
        "Importance is recomputed on the pruned model before every pruning step; the authors' script scores the "
        "heads once, on the unpruned model (their --exact_pruning flag, not passed by heads_pruning.sh).",
        kind="option", when=option_differs("recompute_importance", False), reference=_SCRIPT)
declare("michel.pruning", "layers_vs_heads",
        "The heads-versus-layers comparison (whole layers vs the same number of heads) is ours, after the Primer's "
        "remark; it is not an experiment of Michel et al.", reference=f"{_REPO} (no such experiment) and paper §4-§6")


def default_task(info) -> str:
    """``mlm`` when the model has a masked-LM head, else ``embedding``.

    A model without MLM head (the default MiniLM) is a sentence-embedding model, so what it is
    *for* is its embedding; ``embedding`` fidelity measures exactly that. Not ``upos``: POS is
    mostly lexical, and on MiniLM + EWT dev a probe loses under 1 point of accuracy even with
    every head removed, so its pruning curves are flat and its ablation drops mostly noise.
    """
    return "mlm" if info.has_mlm_head else "embedding"


@dataclass
class Task:
    """Batches on the device, a metric over all of them and a per-batch loss for gradients.

    ``batches`` are what the metric is evaluated on (the dev sentences); ``importance_batches``
    are what :func:`head_importance` scores heads on by default (the training sentences, as the
    authors do); ``None`` means the evaluation batches.
    """

    name: str
    metric_name: str
    batches: list  # dicts: model inputs + task fields
    metric_fn: Callable  # (model, batch) -> (sum of metric, count)
    loss_fn: Callable  # (model, batch) -> scalar loss (for gradients)
    info: dict = field(default_factory=dict)
    importance_batches: list | None = None


def _last_states(model, batch, grad=False):
    return forward(model, batch, base=True, grad=grad).last_hidden_state


def _batches(loaded, encodings, batch_size):
    return [(idx, collate([encodings[i] for i in idx], loaded.device))
            for idx in length_buckets(encodings, batch_size, overhead=batch_overhead(loaded.device))]


def _mean_pool(states, mask):
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1)


def build_task(loaded: LoadedModel, task: str, sentences: Sequence, train_sentences: Sequence | None = None,
               batch_size: int = 32, seed: int = 0, probe_epochs: int = 200,
               importance_sentences: Sequence | None = None) -> Task:
    """Make one of :data:`TASKS` on ``sentences`` (treebank ``Sentence`` objects or word lists).

    ``importance_sentences`` (e.g. training sentences, disjoint from ``sentences``): the same
    objective prepared on them too, as ``Task.importance_batches``, for :func:`head_importance`.

    * ``mlm``: 15% of word pieces masked (fixed by ``seed``); metric = accuracy on them, loss = CE.
    * ``upos``: linear probe on last-layer word states (mean over pieces), trained once on
      ``train_sentences`` with the full model; metric = accuracy on ``sentences``, loss = CE.
    * ``embedding``: metric = mean cosine of mean-pooled embeddings to the unpruned ones. 1 - cos
      has zero gradient at ξ = 1 (a maximum of fidelity), so the gradient loss is a fixed Gaussian
      projection L = Σ u·e/|e|: for a gate gradient J = ∂(e/|e|)/∂ξ, u·J is Gaussian with standard
      deviation |J|, so E_u|∂L/∂ξ| = |J|·sqrt(2/π), and 1 - cos ≈ |J|²/2 to second order.

    The losses (for gradients) are sums over a batch divided by ``batch_size``: a full batch's
    mean, as in the authors' fixed-size batches, and the same gradient at an input whatever batch
    the length buckets put it in (a mean over each batch would weigh inputs by 1 / its size).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    model, tok = loaded.model, loaded.tokenizer
    gen = torch.Generator().manual_seed(seed)

    def encode(sents):
        return encode_inputs(tok, [list(getattr(s, "words", s)) for s in sents], loaded.info.max_length)

    def both(prepare):
        ev = prepare(list(sentences))
        imp = None if importance_sentences is None else prepare(list(importance_sentences))
        return ev, imp

    if task == "mlm":
        if not loaded.info.has_mlm_head:
            raise MissingHeadError(f"task 'mlm' needs a masked-LM head; {loaded.info.name} has none (use 'upos' or 'embedding')")

        def prepare(sents):
            out = []
            es = encode(sents)
            # one draw per piece, sentence by sentence, so the masked pieces do not depend on batching
            draws = [torch.rand(e.n_tokens, generator=gen) for e in es]
            for idx, b in _batches(loaded, es, batch_size):
                ids = b["input_ids"]
                special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (b["attention_mask"] == 0)
                r = torch.ones(ids.shape)  # padding: never picked (and masked out as special)
                for row, i in enumerate(idx):
                    r[row, : len(draws[i])] = draws[i]
                pick = (r < 0.15).to(ids.device) & ~special
                pick[:, 1] |= ~pick.any(1) & ~special[:, 1]  # at least one target per input
                b["labels"] = torch.where(pick, ids, torch.full_like(ids, -100))
                b["input_ids"] = torch.where(pick, torch.full_like(ids, tok.mask_token_id), ids)
                out.append(b)
            return out

        # the head runs at the masked positions only (extract.logits_at): the same logits there
        def metric(m, b):
            rows, cols = (b["labels"] != -100).nonzero(as_tuple=True)
            logits = logits_at(m, b, rows, cols)
            return (logits.argmax(-1) == b["labels"][rows, cols]).sum().item(), len(rows)

        def loss(m, b):  # per input, as a full batch's mean would weigh it (see build_task)
            rows, cols = (b["labels"] != -100).nonzero(as_tuple=True)
            return F.cross_entropy(logits_at(m, b, rows, cols, grad=True), b["labels"][rows, cols], reduction="sum") / batch_size

        ev, imp = both(prepare)
        return Task(task, "masked-token accuracy", ev, metric, loss, importance_batches=imp)

    if task == "upos":
        extra = list(importance_sentences or [])
        tags = sorted({t for s in list(sentences) + list(train_sentences or []) + extra for t in s.upos})
        tag_id = {t: i for i, t in enumerate(tags)}

        def word_batches(sents):
            es = encode(sents)
            out = []
            for idx, b in _batches(loaded, es, batch_size):
                sub = [es[i] for i in idx]
                _, frm = pooling_matrices(sub, b["input_ids"].shape[1], device=loaded.device)
                sel, lab = [], []  # (row, unit) of every kept word and its gold tag
                for r, (i, e) in enumerate(zip(idx, sub)):
                    for u in e.word_units:
                        sel.append((r, int(u)))
                        lab.append(tag_id[sents[i].upos[e.unit_word[u]]])
                b["sel"] = torch.as_tensor(sel, device=loaded.device).T
                b["labels"] = torch.as_tensor(lab, device=loaded.device)
                b["frm"] = frm
                out.append(b)
            return out

        def word_states(m, b, grad=False):
            units = torch.bmm(b["frm"], _last_states(m, b, grad))  # mean over each word's pieces
            return units[b["sel"][0], b["sel"][1]]

        if not train_sentences:
            raise ValueError("task 'upos' needs train_sentences for the probe")
        train = word_batches(list(train_sentences))
        with torch.no_grad(), masked_heads(model, None):
            X = torch.cat([word_states(model, b) for b in train]).float()
            y = torch.cat([b["labels"] for b in train])
        # the probe is trained on the CPU whatever the model's device (the same probe either way)
        probe = _train_probe(X.cpu(), y.cpu(), len(tags), seed, probe_epochs).to(loaded.device)
        ev, imp = both(word_batches)

        def metric(m, b):
            return (probe(word_states(m, b)).argmax(-1) == b["labels"]).sum().item(), len(b["labels"])

        def loss(m, b):
            return F.cross_entropy(probe(word_states(m, b, grad=True)), b["labels"], reduction="sum") / batch_size

        train_acc = (probe(X.to(loaded.device)).argmax(-1) == y).float().mean().item()
        return Task(task, "UPOS probe accuracy", ev, metric, loss,
                    {"n_train_words": len(y), "probe_train_accuracy": train_acc, "tags": tags}, imp)

    # embedding
    def prepare(sents):
        out = []
        with torch.no_grad(), masked_heads(model, None):
            for _, b in _batches(loaded, encode(sents), batch_size):
                e = _mean_pool(_last_states(model, b), b["attention_mask"])
                b["ref"] = F.normalize(e, dim=-1)
                # drawn batch after batch in the sorted order of the inputs: the same whatever the batching
                b["u"] = torch.randn(e.shape, generator=gen).to(e.device, e.dtype)
                out.append(b)
        return out

    def metric(m, b):
        e = _mean_pool(_last_states(m, b), b["attention_mask"])
        return F.cosine_similarity(e, b["ref"], dim=-1).sum().item(), len(e)

    def loss(m, b):
        e = F.normalize(_mean_pool(_last_states(m, b, grad=True), b["attention_mask"]), dim=-1)
        return (b["u"] * e).sum() / batch_size

    ev, imp = both(prepare)
    return Task(task, "cosine to unpruned embedding", ev, metric, loss, importance_batches=imp)


@timed("train")
def _train_probe(X, y, n_classes, seed, epochs):
    """Multinomial logistic regression, full batch (small data: seconds on CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Linear(X.shape[1], n_classes)
    mu, sd = X.mean(0), X.std(0) + 1e-6  # standardise inside the probe so it applies to raw states
    lin = torch.nn.Sequential(_Affine(mu, sd), probe)
    opt = torch.optim.Adam(lin.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(lin(X), y).backward()
        opt.step()
    for p in lin.parameters():
        p.requires_grad_(False)
    return lin.eval()


class _Affine(torch.nn.Module):
    def __init__(self, mu, sd):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)

    def forward(self, x):
        return (x - self.mu.to(x.dtype)) / self.sd.to(x.dtype)


# --------------------------------------------------------------------------- measuring


def _shape(model):
    c = model.config
    return c.num_hidden_layers, c.num_attention_heads


def evaluate(loaded: LoadedModel, task: Task, mask: torch.Tensor | np.ndarray | None = None,
             prefix: list | None = None, skip: Sequence[int] = ()) -> float:
    """The task metric with head mask ``mask`` (L x H; 0 removes a head), ``None`` = full model;
    ``skip``: transformer layers left out altogether (:func:`skip_layers`).

    ``prefix`` (from :func:`layer_outputs`): the full model's layer outputs on ``task``'s batches;
    then the layers below the lowest one with a removed head or a skipped layer are not run again
    but replayed (:func:`bertology.interventions.resumed_at`), which gives the same metric."""
    model = loaded.model
    skip = sorted({int(l) for l in skip})
    first = min(_masked_layers(mask) + skip, default=0)  # the lowest layer that changes
    if skip:  # the stack without the skipped layers keeps the layers below them first: the same replay
        first = min(first, len(layer_stack(model).layer) - len(skip) - 1)
    total = count = 0
    with masked_heads(model, mask), (skipped_layers(model, skip) if skip else nullcontext()), torch.no_grad():
        for i, b in enumerate(task.batches):
            if prefix is not None and first:
                with resumed_at(model, first, prefix[i][first - 1]):
                    s, n = task.metric_fn(model, b)
            else:
                s, n = task.metric_fn(model, b)
            total, count = total + s, count + n
    return total / max(count, 1)


def _masked_layers(mask) -> list[int]:
    """Indices of the layers with a gate other than 1 (none when there is no mask)."""
    if mask is None:
        return []
    m = torch.as_tensor(mask).detach().cpu()
    return torch.nonzero((m != 1).any(dim=1)).flatten().tolist()


def layer_outputs(loaded: LoadedModel, task: Task) -> list | None:
    """The unmasked model's transformer-layer outputs on each of ``task``'s batches, for
    :func:`evaluate`'s ``prefix``; ``None`` for a model without a separable layer stack (ALBERT)
    or a task that does not run exactly one forward pass per batch."""
    model = loaded.model
    try:
        with recorded_layers(model) as calls, masked_heads(model, None), torch.no_grad():
            for b in task.batches:
                task.metric_fn(model, b)
    except UnsupportedModelError:
        return None
    return calls if len(calls) == len(task.batches) else None


def gate_gradients(loaded: LoadedModel, task: Task, batch: dict, mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """∂L/∂ξ_{l,h,x,t} for one batch: the gradient of the task loss with respect to a gate on
    head ``h`` of layer ``l`` at token position ``t`` of example ``x``, as a ``(L, B, T, H)`` tensor.

    A gate on a head's output ctx at one position has gradient ⟨ctx, ∂L/∂ctx⟩ there (the
    authors' code takes this dot product of the head's context vector and its gradient). Summed
    over positions and examples it is the gradient with respect to the head's one gate ξ_h.
    ``mask``: heads already removed (0) stay removed; their gradient is 0.
    """
    model = loaded.model
    L, H = _shape(model)
    dtype = next(model.parameters()).dtype
    xi = (torch.ones((L, H), dtype=dtype, device=loaded.device) if mask is None
          else torch.as_tensor(mask, dtype=dtype, device=loaded.device).clone())
    xi.requires_grad_(True)  # so every head output is part of the graph, even with frozen weights
    with captured_heads(model) as heads, masked_heads(model, xi):
        loss = task.loss_fn(model, batch)
        ctxs = [heads[layer] for layer in range(L)]  # (B, T, H, d): the heads' outputs before the projection
        grads = torch.autograd.grad(loss, ctxs)
    out = []
    for c, g in zip(ctxs, grads):
        out.append((c * g).sum(-1).detach())
    return torch.stack(out)


def head_importance(loaded: LoadedModel, task: Task, normalize: bool = True, abs_at: str = "token",
                    batches: list | None = None, mask: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Michel's head importance (L x H), one forward + backward pass per batch.

    Scored on ``batches``, by default ``task.importance_batches`` (the training sentences) or,
    when the task has none, its evaluation batches. ``abs_at`` (see :data:`ABS_AT`) says where
    the absolute value is taken:

    * ``"token"`` (default, the authors' ``calculate_head_importance``): Σ_x Σ_t |∂L/∂ξ_{h,x,t}|;
      like theirs, every layer but the last is divided by the number of (non-padding) tokens
      and the last layer by the number of examples;
    * ``"example"``: Σ_x |Σ_t ∂L/∂ξ_{h,x,t}| / number of examples;
    * ``"batch"``: Σ_batches |∂L_batch/∂ξ_h| / number of batches (the gradient of the batch loss,
      where contributions of opposite sign cancel).

    ``normalize``: divide each layer's scores by their L2 norm, as the authors do with
    ``--normalize_pruning_by_layer`` (their BERT pruning command); there is no global rescaling.
    ``mask``: score the heads of the model with these heads removed (0).
    """
    batches = batches if batches is not None else (task.importance_batches or task.batches)
    imp = aggregate_importance([(gate_gradients(loaded, task, b, mask), b["attention_mask"]) for b in batches], abs_at)
    return normalize_by_layer(imp) if normalize else imp


def aggregate_importance(gradients: Sequence[tuple[torch.Tensor, torch.Tensor]], abs_at: str = "token") -> np.ndarray:
    """Unnormalised importance (L x H) from per-batch gate gradients.

    ``gradients``: one ``(g, attention_mask)`` per batch, ``g`` of shape ``(L, B, T, H)`` from
    :func:`gate_gradients` and ``attention_mask`` ``(B, T)``; see :func:`head_importance` for
    what each ``abs_at`` computes.
    """
    if abs_at not in ABS_AT:
        raise ValueError(f"abs_at must be one of {ABS_AT}, not {abs_at!r}")
    total = n_tokens = n_examples = 0
    for g, attention_mask in gradients:
        g = torch.as_tensor(g).detach().double().cpu()
        if abs_at == "token":
            part = g.abs().sum((1, 2))
        elif abs_at == "example":
            part = g.sum(2).abs().sum(1)
        else:
            part = g.sum((1, 2)).abs()
        total = total + part
        n_tokens += int(torch.as_tensor(attention_mask).sum())
        n_examples += int(g.shape[1])
    if isinstance(total, int):
        raise ValueError("no batches to score importance on")
    if abs_at == "token":  # the authors: layers[:-1] / tokens, last layer / examples
        denom = torch.full((total.shape[0], 1), float(n_tokens), dtype=torch.float64)
        denom[-1] = float(n_examples)
    else:
        denom = torch.tensor(float(n_examples if abs_at == "example" else len(gradients)), dtype=torch.float64)
    return (total / denom).numpy()


def normalize_by_layer(importance: np.ndarray) -> np.ndarray:
    """Each layer's scores divided by their L2 norm (the authors: exponent 2, + 1e-20)."""
    return importance / (np.sqrt((np.asarray(importance) ** 2).sum(1, keepdims=True)) + 1e-20)


def recomputed_order(loaded: LoadedModel, task: Task, steps: Sequence[int], normalize: bool = True,
                     abs_at: str = "token") -> list[tuple[int, int]]:
    """Removal order when importance is recomputed on the pruned model before every step (the
    authors' ``--exact_pruning``): at each step the still-present heads with the lowest scores
    under the current mask go, as many as the step removes. Heads never reached by ``steps``
    follow in the order of the last scores."""
    L, H = _shape(loaded.model)
    removed: list[tuple[int, int]] = []
    imp = None
    for n in sorted(set(steps)):
        if n <= len(removed):
            continue
        imp = head_importance(loaded, task, normalize=normalize, abs_at=abs_at,
                              mask=mask_without(removed, (L, H)))
        rest = [h for h in removal_order(imp) if h not in removed]
        removed += rest[: n - len(removed)]
    if imp is None:
        imp = head_importance(loaded, task, normalize=normalize, abs_at=abs_at)
    return removed + [h for h in removal_order(imp) if h not in removed]


def ablation_drops(loaded: LoadedModel, task: Task, base: float | None = None) -> np.ndarray:
    """Leave-one-head-out: metric(full) - metric(head h removed), for every head (L x H)."""
    L, H = _shape(loaded.model)
    base = evaluate(loaded, task) if base is None else base
    prefix = layer_outputs(loaded, task)  # a head of layer l leaves layers below l as they are
    drops = np.zeros((L, H))
    for l in range(L):
        for h in range(H):
            m = np.ones((L, H))
            m[l, h] = 0
            drops[l, h] = base - evaluate(loaded, task, m, prefix)
    return drops


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def heads_table(importance: np.ndarray, drops: np.ndarray) -> pd.DataFrame:

    L, H = importance.shape
    return pd.DataFrame([{"layer": l, "head": h, "label": head_label(l, h), "importance": importance[l, h],
                          "ablation_drop": drops[l, h]} for l in range(L) for h in range(H)])


# --------------------------------------------------------------------------- pruning curves


def removal_order(scores: np.ndarray) -> list[tuple[int, int]]:
    """Heads from least to most important (ties: lower layer, then head, first)."""
    L, H = scores.shape
    flat = sorted(range(L * H), key=lambda i: (scores.flat[i], i))
    return [divmod(i, H) for i in flat]


def mask_without(removed: Sequence[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    m = np.ones(shape)
    for l, h in removed:
        m[l, h] = 0
    return m


def curve_steps(n_heads: int, step: float = PRUNE_STEP) -> list[int]:
    """Numbers of heads removed at each step, as the authors' ``determine_pruning_sequence``
    counts them: ``int(n_heads * p / 100)`` (rounded down) for p = 100·step, 200·step, ... 100,
    plus 0 (the unpruned model); deduplicated. Their script uses 5% steps (:data:`PRUNE_STEP`)."""
    ks = int(round(1 / step))
    pcts = [round(k * step * 100, 9) for k in range(1, ks + 1)]
    return sorted({0} | {int(n_heads * p / 100) for p in pcts})


def pruning_curve(loaded: LoadedModel, task: Task, order: Sequence[tuple[int, int]], steps: Sequence[int],
                  evaluate_fn: Callable | None = None) -> pd.DataFrame:
    """Metric after removing the first ``n`` heads of ``order``, for each ``n`` in ``steps``."""
    L = 1 + max(l for l, _ in order)
    H = 1 + max(h for _, h in order)
    ev = evaluate_fn or (lambda m: evaluate(loaded, task, m))
    rows = [{"n_removed": n, "fraction": n / (L * H), "metric": ev(mask_without(order[:n], (L, H)))} for n in steps]
    return pd.DataFrame(rows)


def removable(curve: pd.DataFrame, base: float, level: float) -> int:
    """Most heads removed while every step so far keeps the metric ≥ ``level`` x unpruned."""
    n = 0
    for r in curve.sort_values("n_removed").itertuples():
        if r.metric < level * base:
            break
        n = r.n_removed
    return int(n)


def random_orders(shape: tuple[int, int], n: int, seed: int) -> list[list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    L, H = shape
    return [[divmod(int(i), H) for i in rng.permutation(L * H)] for _ in range(n)]


# --------------------------------------------------------------------------- single heads, layers


def best_single_head(loaded: LoadedModel, task: Task) -> pd.DataFrame:
    """Michel §3.2: per layer, keep only one head (others removed); metric for every choice."""
    L, H = _shape(loaded.model)
    prefix = layer_outputs(loaded, task)
    rows = []
    for l in range(L):
        for h in range(H):
            m = np.ones((L, H))
            m[l] = 0
            m[l, h] = 1
            rows.append({"layer": l, "head": h, "metric": evaluate(loaded, task, m, prefix)})
    return pd.DataFrame(rows)


def best_single_head_summary(single: pd.DataFrame, base: float) -> pd.DataFrame:
    """Per layer, the head that does best when it is the only one kept (Michel §3.2, Table 3 style)."""

    best = single.loc[single.groupby("layer")["metric"].idxmax()].reset_index(drop=True)
    best["label"] = [head_label(l, h) for l, h in zip(best["layer"], best["head"])]
    best["delta"] = best["metric"] - base
    worst = single.groupby("layer")["metric"].min().rename("worst_single_head").reset_index()
    return best.merge(worst, on="layer")[["layer", "head", "label", "metric", "delta", "worst_single_head"]]


#: Run the model without the given transformer layers (``interventions.skipped_layers``).
skip_layers = skipped_layers


def head_params(model) -> int:
    """Parameters of one head: its rows of Q, K, V (weights + biases) and its columns of the output."""
    c = model.config
    d = c.hidden_size // c.num_attention_heads
    return 3 * (c.hidden_size * d + d) + c.hidden_size * d


def layer_params(model) -> int:
    return sum(p.numel() for p in layer_stack(model).layer[0].parameters())


def layers_vs_heads(loaded: LoadedModel, task: Task, importance: np.ndarray) -> pd.DataFrame:
    """Remove k whole layers (least harmful alone first) vs all heads of those layers vs k·H heads by importance."""
    model = loaded.model
    L, H = _shape(model)
    prefix = layer_outputs(loaded, task)  # the layers below the lowest removed one are replayed
    alone = [evaluate(loaded, task, skip=[l], prefix=prefix) for l in range(L)]
    layer_order = sorted(range(L), key=lambda l: (-alone[l], l))
    head_order = removal_order(importance)
    full = evaluate(loaded, task)
    rows = [{"strategy": s, "k_layers": 0, "heads_removed": 0, "params_removed": 0, "metric": full}
            for s in ("whole layers", "attention of layers", "heads by importance")]
    for k in range(1, L):  # all L would leave no encoder
        drop = layer_order[:k]
        rows.append({"strategy": "whole layers", "k_layers": k, "heads_removed": k * H,
                     "params_removed": k * layer_params(model), "metric": evaluate(loaded, task, skip=drop, prefix=prefix)})
        m = np.ones((L, H))
        m[drop] = 0
        rows.append({"strategy": "attention of layers", "k_layers": k, "heads_removed": k * H,
                     "params_removed": k * H * head_params(model), "metric": evaluate(loaded, task, m, prefix)})
        rows.append({"strategy": "heads by importance", "k_layers": k, "heads_removed": k * H,
                     "params_removed": k * H * head_params(model),
                     "metric": evaluate(loaded, task, mask_without(head_order[: k * H], (L, H)), prefix)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- physical pruning


class _NoHeads(torch.nn.Module):
    """Self-attention of a layer whose heads were all pruned: contributes nothing (the output
    projection then adds only its bias, exactly as a fully masked layer does)."""

    num_attention_heads, all_head_size, _bertology_kept = 0, 0, []

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def _projections(layer):
    """Where one layer keeps its head projections: ``(owner of the attention, its attribute name,
    the attention module, query/key/value names, owner of the output projection, its name)``."""
    att = getattr(layer, "attention", None)
    if att is not None and hasattr(att, "self") and hasattr(getattr(att, "output", None), "dense"):
        return att, "self", att.self, ("query", "key", "value"), att.output, "dense"  # BERT, RoBERTa, ELECTRA
    if att is not None and all(hasattr(att, n) for n in ("q_lin", "k_lin", "v_lin", "out_lin")):
        return layer, "attention", att, ("q_lin", "k_lin", "v_lin"), att, "out_lin"  # DistilBERT
    raise UnsupportedModelError(f"physical head pruning does not know the layout of {type(layer).__name__}")


class _BiasOnly(torch.nn.Module):
    """Attention (with its output projection) of a DistilBERT layer whose heads were all pruned:
    the projection's bias, as a fully masked layer gives."""

    n_heads, _bertology_kept = 0, []

    def __init__(self, out: torch.nn.Linear):
        super().__init__()
        self.bias = out.bias

    def forward(self, hidden_states, *args, **kwargs):
        return self.bias.expand(*hidden_states.shape[:-1], -1), None


def prune_heads(model, heads: dict[int, Sequence[int]]) -> dict[int, list[int]]:
    """Remove heads ``{layer: [head, ...]}`` (original indices) from ``model`` in place.

    Slices each layer's query/key/value output rows and the output projection's input columns.
    The attention modules of transformers 5.x (BERT, RoBERTa, ELECTRA, DistilBERT) reshape with
    ``view(..., -1, attention_head_size)``, so the head count follows from the new matrix sizes;
    the head-count attributes are still updated for anything that reads them. ALBERT (one layer
    shared across depth) raises :class:`UnsupportedModelError`. Returns the heads kept per layer.
    """
    kept = {}
    d = model.config.hidden_size // model.config.num_attention_heads
    for l, layer in enumerate(layer_stack(model).layer):
        owner, name, sa, qkv, out_owner, out_name = _projections(layer)
        n_attr = "num_attention_heads" if hasattr(sa, "num_attention_heads") else "n_heads"
        orig = getattr(sa, "_bertology_kept", list(range(getattr(sa, n_attr))))
        drop = set(heads.get(l, ())) & set(orig)
        keep = [h for h in orig if h not in drop]
        kept[l] = keep
        if not drop:
            continue
        out = getattr(out_owner, out_name)
        if not keep:
            setattr(owner, name, _NoHeads() if out_owner is not sa else _BiasOnly(out))
            if out_owner is sa:  # DistilBERT: the projection went with the attention module
                continue
        pos = [orig.index(h) for h in keep]  # positions within the current (possibly pruned) matrices
        idx = torch.cat([torch.arange(p * d, (p + 1) * d) for p in pos]) if pos else torch.zeros(0, dtype=torch.long)
        idx = idx.to(out.weight.device)
        if keep:
            for q in qkv:
                setattr(sa, q, _slice_linear(getattr(sa, q), idx, dim=0))
            setattr(sa, n_attr, len(keep))
            if hasattr(sa, "all_head_size"):
                sa.all_head_size = len(keep) * d
            sa._bertology_kept = keep
        setattr(out_owner, out_name, _slice_linear(out, idx, dim=1))
    return kept


def _slice_linear(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
    w = lin.weight.index_select(dim, idx)
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.index_select(0, idx) if dim == 0 else lin.bias)
    return new


def pruned_copy(loaded: LoadedModel, removed: Sequence[tuple[int, int]]) -> LoadedModel:
    """A deep copy of ``loaded`` with the heads ``removed`` physically pruned."""
    model = copy.deepcopy(loaded.model)
    set_head_mask(model, None)
    heads = {}
    for l, h in removed:
        heads.setdefault(l, []).append(h)
    prune_heads(model, heads)
    return LoadedModel(loaded.tokenizer, model, loaded.info)


def time_forward(model, batches: list, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds for one inference pass over ``batches``. On a GPU the clock
    starts and stops with the device's queue empty, so it times the work, not its launch."""
    device = next(model.parameters()).device
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        for b in batches:
            forward(model, b, base=True)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_pruning(loaded: LoadedModel, task: Task, removed: Sequence[tuple[int, int]], repeats: int = 3) -> dict:
    """Physically prune ``removed`` in a copy and compare it with the unpruned model in this run.

    Returns parameter counts, best-of-``repeats`` forward times over the task's batches (unpruned
    and pruned timed alternately, so machine load hits both alike), their ratio, the task metric of
    the pruned copy and of the masked model (equal up to float error), and the largest absolute
    difference between their last hidden states.
    """
    pruned = pruned_copy(loaded, removed)
    L, H = _shape(loaded.model)
    mask = mask_without(removed, (L, H))
    masked_metric = evaluate(loaded, task, mask)
    total = count = 0
    with torch.no_grad():
        for b in task.batches:
            s, n = task.metric_fn(pruned.model, b)
            total, count = total + s, count + n
    with masked_heads(loaded, mask):
        diff = max(float((_last_states(pruned.model, b) - _last_states(loaded.model, b)).abs().max())
                   for b in task.batches)
    t_full, t_pruned = [], []
    for _ in range(repeats):
        t_full.append(time_forward(loaded.model, task.batches, repeats=1))
        t_pruned.append(time_forward(pruned.model, task.batches, repeats=1))
    return {"heads_removed": len(removed), "params_unpruned": param_count(loaded.model),
            "params_pruned": param_count(pruned.model), "seconds_unpruned": min(t_full),
            "seconds_pruned": min(t_pruned), "speedup": min(t_full) / min(t_pruned),
            "metric_masked": masked_metric, "metric_pruned": total / max(count, 1), "max_abs_state_diff": diff}


# --------------------------------------------------------------------------- findings

#: What Michel et al. (2019) report, as statements with where each was read (their setting: a WMT
#: Transformer-large and BERT-base fine-tuned on MNLI, not a pre-trained encoder without a task).
#: We quote no per-head numbers we could not re-read.
MICHEL_REFERENCE: list[dict] = [
    {"claim": "single heads",
     "statement": "most heads can be removed individually after training without a significant drop in test "
                  "performance (§3.1)",
     "source": "paper abstract and §1 (arXiv 1905.10650)"},
    {"claim": "one head per layer",
     "statement": "many layers can be reduced to a single head without hurting test performance (§3.2)",
     "source": "paper abstract and §1 (arXiv 1905.10650)"},
    {"claim": "jointly",
     "statement": "large parts of the model can be pruned jointly with little loss, but the majority of heads "
                  "cannot all go at once (§4)",
     "source": "paper §1 (arXiv 1905.10650)"},
]

#: How the authors' BERT pruning experiment is set up, read from their released code.
MICHEL_PROCEDURE: list[dict] = [
    {"step": "importance", "statement": "sum over token positions and examples of |⟨head output, its gradient⟩| "
                                        "of the batch-mean cross-entropy, each layer but the last divided by the "
                                        "number of tokens, the last by the number of examples",
     "source": _IMPORTANCE_CODE},
    {"step": "normalisation", "statement": "each layer's importance divided by its L2 norm (flag passed by the "
                                           "README's BERT pruning command); no global rescaling",
     "source": f"{_IMPORTANCE_CODE}; {_REPO} README.md"},
    {"step": "data", "statement": "importance on the (whole) training set, pruned model evaluated on the dev set",
     "source": _PRUNE_CODE},
    {"step": "steps", "statement": "5%, 10%, ... 100% of all heads removed, int(total x p / 100) heads each; "
                                   "importance computed once on the unpruned model (no --exact_pruning)",
     "source": _SCRIPT},
]


# --------------------------------------------------------------------------- notebook 08: runs and findings


def importance_vs_ablation(loaded: LoadedModel, task: Task, base: float, abs_at: str = "token") -> dict:
    """Michel §4.1: gradient importance (raw and layer-normalised) of every head against the oracle
    (each head removed alone), timed. Returns ``raw``, ``normalised``, ``drops`` (``(L, H)`` arrays),
    ``heads`` (:func:`heads_table` plus ``importance_normalised``) and ``summary`` (Spearman
    correlations, seconds of each method and their ratio ``speedup``)."""
    t0 = time.perf_counter()
    raw = head_importance(loaded, task, normalize=False, abs_at=abs_at)
    t_grad = time.perf_counter() - t0
    t0 = time.perf_counter()
    drops = ablation_drops(loaded, task, base)
    t_abl = time.perf_counter() - t0
    normalised = normalize_by_layer(raw)
    heads = heads_table(raw, drops).assign(importance_normalised=normalised.ravel())
    summary = {"spearman_raw": spearman(raw, drops), "spearman_normalised": spearman(normalised, drops),
               "seconds_gradient": t_grad, "seconds_ablation": t_abl, "speedup": t_abl / t_grad}
    return {"raw": raw, "normalised": normalised, "drops": drops, "heads": heads, "summary": summary}


def single_removals(heads: pd.DataFrame, base: float, tolerance: float = 0.01) -> dict:
    """Michel §3.1 from a :func:`heads_table`: how many single-head removals improve the metric
    (``ablation_drop < 0``), how many cost at most ``tolerance`` of ``|base|``, and the worst one."""
    worst = heads["ablation_drop"].idxmax()
    return {"improving": int((heads["ablation_drop"] < 0).sum()),
            "within_1pct": int((heads["ablation_drop"].abs() <= tolerance * abs(base)).sum()),
            "largest_drop": float(heads.loc[worst, "ablation_drop"]), "largest_drop_head": heads.loc[worst, "label"]}


def curves(loaded: LoadedModel, task: Task, orders: dict[str, Sequence[tuple[int, int]]], steps: Sequence[int],
           n_random: int = 3, seed: int = 0) -> pd.DataFrame:
    """:func:`pruning_curve` for each named order (``seed`` -1) and for ``n_random`` random orders
    (``order="random"``, ``seed`` 0..n_random-1, drawn by :func:`random_orders` with ``seed``).

    Each distinct mask is evaluated once (the unpruned model and the model without any head are
    on every curve), and the layers below the lowest removed head are replayed
    (:func:`layer_outputs`): the same numbers as evaluating every point afresh, fewer passes."""
    L, H = _shape(loaded.model)
    prefix = layer_outputs(loaded, task)
    seen: dict[bytes, float] = {}

    def ev(mask):  # every distinct mask once: each curve starts unpruned and ends with every head removed
        key = np.asarray(mask, dtype=np.float32).tobytes()
        if key not in seen:
            seen[key] = evaluate(loaded, task, mask, prefix)
        return seen[key]

    out = [pruning_curve(loaded, task, o, steps, ev).assign(order=name, seed=-1) for name, o in orders.items()]
    for i, o in enumerate(random_orders((L, H), n_random, seed)):
        out.append(pruning_curve(loaded, task, o, steps, ev).assign(order="random", seed=i))
    return pd.concat(out, ignore_index=True)


def removable_table(curves: pd.DataFrame, base: float, levels: Sequence[float] = (0.9, 0.95)) -> pd.DataFrame:
    """Per (order, seed) of a curves table, :func:`removable` heads at each level:
    ``[order, seed, removable_90, removable_95]``."""
    rows = [{"order": name, "seed": s, **{f"removable_{int(round(lv * 100))}": removable(c, base, lv) for lv in levels}}
            for (name, s), c in curves.groupby(["order", "seed"])]
    return pd.DataFrame(rows)


def findings(base: float, removable: pd.DataFrame, best_single: pd.DataFrame, layers_vs_heads: pd.DataFrame,
             steps: Sequence[int], n_heads: int, tolerance: float = 0.05) -> dict:
    """Numbers of notebook 08's "what this run shows": heads removable at 95% of ``base`` by
    importance, ablation and (mean) random order, the curve step, layers within ``tolerance`` of
    ``|base|`` with one head kept, and the metric after removing one whole layer vs ``n_heads``
    heads chosen by importance (None when ``layers_vs_heads`` is None: not run)."""
    def at_one(strategy):
        if layers_vs_heads is None:  # not run for this architecture (see unsupported())
            return None
        return float(layers_vs_heads[(layers_vs_heads.strategy == strategy) & (layers_vs_heads.k_layers == 1)].metric.iloc[0])

    by = removable.groupby("order")["removable_95"]
    n_random = int((removable.order == "random").sum())
    return {"base": float(base), "removable_95_importance": int(by.first()["gradient importance"]),
            "removable_95_ablation": int(by.first()["ablation"]),
            "removable_95_random": float(by.mean()["random"]) if n_random else None, "n_random": n_random,
            "curve_step": int(steps[1]), "n_layers": int(len(best_single)),
            "layers_near_full_one_head": int((best_single.delta >= -tolerance * abs(base)).sum()),
            "one_layer_removed": at_one("whole layers"), "same_heads_removed": at_one("heads by importance"),
            "heads_per_layer": int(n_heads)}


def findings_text(f: dict, metric_name: str, n_sentences: int, timing: dict, single: dict, speed: dict,
                  device: str) -> list[str]:
    """Markdown bullets from :func:`findings` ``f``, the ``summary`` of :func:`importance_vs_ablation`
    (``timing``), :func:`single_removals` and :func:`measure_pruning` (``speed``)."""
    n = f["n_layers"] * f["heads_per_layer"]
    return [
        f"Task: **{metric_name}**, unpruned {f['base']:.3f} ({n_sentences} sentences).",
        f"Gradient importance took {timing['seconds_gradient']:.1f} s for all {n} heads; removing each head in turn took "
        f"{timing['seconds_ablation']:.1f} s ({timing['speedup']:.0f}x longer). Their rank correlation is "
        f"{timing['spearman_raw']:.2f} (raw) and {timing['spearman_normalised']:.2f} (layer-normalised).",
        f"Alone, {single['within_1pct']} of {n} heads cost at most 1% of the metric; {single['improving']} single "
        "removals improve it.",
        f"Keeping 95% of the metric, importance order removes {f['removable_95_importance']} heads, ablation order "
        f"{f['removable_95_ablation']}"
        + ("" if f["removable_95_random"] is None else
           f", random order {f['removable_95_random']:.0f}" + (" on average" if f["n_random"] > 1 else ""))
        + f" (curve steps of {f['curve_step']} heads).",
        f"With one head kept, {f['layers_near_full_one_head']} of {f['n_layers']} layers stay within 5% of the unpruned metric.",
    ] + ([] if f["one_layer_removed"] is None else [
        f"Removing the least harmful whole layer gives {f['one_layer_removed']:.3f}; removing the same number of heads "
        f"({f['heads_per_layer']}) by importance gives {f['same_heads_removed']:.3f}."]) + ([] if speed is None else [
        f"Physically removing {speed['heads_removed']} heads cut parameters from {speed['params_unpruned']:,} to "
        f"{speed['params_pruned']:,} and made the forward pass {speed['speedup']:.2f}x as fast on {device} (same outputs "
        f"as masking, max difference {speed['max_abs_state_diff']:.1e})."])


def unsupported(loaded: LoadedModel) -> str | None:
    """Why whole-layer removal and physical head pruning cannot run on ``loaded`` (None: they can).
    ALBERT applies one shared layer at every depth, so neither a layer nor a head of one depth
    can be cut out alone; head masks still work (the attention knows its depth per call)."""
    try:
        for layer in layer_stack(loaded.model).layer:
            _projections(layer)
    except UnsupportedModelError as exc:
        return str(exc)
    return None


def reference_text() -> str:
    """Michel et al.'s findings as a Markdown block, each with where it was read (:data:`MICHEL_REFERENCE`)."""
    return ("**Michel et al. (2019), for reference (BERT-base fine-tuned on MNLI and a WMT Transformer; different model "
            "and task):**\n" + "\n".join(f"- *{r['claim']}*: {r['statement']} (source: {r['source']})" for r in MICHEL_REFERENCE))


def orders(importance: dict, raw: bool = True) -> dict[str, list[tuple[int, int]]]:
    """The named removal orders of Michel §4.2 from :func:`importance_vs_ablation`'s result:
    layer-normalised importance (the authors', their Fig. 3 solid line), raw importance (ours,
    left out when ``raw`` is False) and the oracle's ablation drops (their dashed line)."""
    named = {"gradient importance": removal_order(importance["normalised"])}
    if raw:
        named["gradient importance (raw)"] = removal_order(importance["raw"])
    named["ablation"] = removal_order(importance["drops"])
    return named


def data_deviation(metric_name: str, n_dev: int, dev_data: str, n_importance: int | None = None) -> str:
    """The report-header line on what notebook 08 prunes against, next to Michel et al.'s setting."""
    return (f"Data: {metric_name} on {n_dev} dev sentences of {dev_data}"
            + ("" if n_importance is None else f", importance on {n_importance} training sentences")
            + " (Michel et al.: MNLI, importance on its training set, accuracy on its dev set; WMT translation, BLEU).")


def check_pruned_equals_masked(speed: dict, tol: float = 1e-3) -> dict:
    """``speed`` (:func:`measure_pruning`) if the physically pruned copy scores as the masked model
    does (within ``tol``); else a RuntimeError, since the timing would compare different models."""
    if not abs(speed["metric_pruned"] - speed["metric_masked"]) < tol:
        raise RuntimeError(f"physical pruning does not equal masking: metric {speed['metric_pruned']} pruned vs "
                           f"{speed['metric_masked']} masked")
    return speed


# ----------------------------------------------------------------------------- notebook 08: one function a section


def check_parameters(task: str = "auto", importance_split: str = "train", abs_at: str = "token",
                     step: float = PRUNE_STEP) -> None:
    """Notebook 08's parameters: ``task`` ``"auto"`` or one of :data:`TASKS`, ``importance_split``
    ``"train"`` or ``"dev"``, ``abs_at`` one of :data:`ABS_AT`, ``step`` in (0, 0.5]; else a
    :class:`bertology.notebook.ParameterError` naming the parameter."""
    from .notebook import ParameterError, check_choice

    check_choice("task", task, ("auto",) + TASKS)
    check_choice("importance_split", importance_split, ("train", "dev"))
    check_choice("abs_at", abs_at, ABS_AT)
    if not 0 < step <= 0.5:
        raise ParameterError(f"parameter 'step' must be in (0, 0.5], got {step!r}")


@dataclass
class PruningSetup:
    """:func:`pruning_setup`: the evaluation sentences, the sentences head importance is scored on
    (None: the evaluation sentences), the :class:`Task` and the unpruned model's metric."""

    sentences: list
    importance_sentences: list | None
    task: Task
    base: float


def pruning_setup(run, task: str, data: str = "auto", n_sentences: int = 128, n_train: int = 2000,
                  n_importance: int = 128, importance_split: str = "train", abs_at: str = "token",
                  step: float = PRUNE_STEP, batch_size: int = 32) -> PruningSetup:
    """Notebook 08's task (:func:`build_task`, seeded with ``run.seed``) on ``n_sentences`` dev
    sentences of ``data`` (``run.treebank``), with head importance on the first ``n_importance``
    training sentences (``importance_split="train"``, the authors) or on the dev sentences
    (``"dev"``); ``upos`` trains its probe on ``n_train`` training sentences. Records on ``run``
    (:class:`bertology.notebook.Run`) the data line and sizes, ``unpruned_metric``, the
    :func:`data_deviation` and the method ``michel`` with its options."""
    sentences = run.treebank(data, "dev", limit=n_sentences)
    dev_data = run.meta["data"]
    need_train = max(n_train if task == "upos" else 0, n_importance if importance_split == "train" else 0)
    train = run.treebank(data, "train", limit=need_train) if need_train else None
    imp_sents = train[:n_importance] if importance_split == "train" else None
    run.set_data(dev_data if imp_sents is None else f"{dev_data}; importance on {run.meta['data']}",
                 n_sentences=len(sentences), n_importance=len(imp_sents or sentences))
    T = build_task(run.loaded, task, sentences, train if task == "upos" else None, batch_size=batch_size,
                   seed=run.seed, importance_sentences=imp_sents)
    base = evaluate(run.loaded, T)
    run.value("unpruned_metric", base)
    run.deviation(data_deviation(T.metric_name, len(sentences), dev_data, None if imp_sents is None else len(imp_sents)))
    run.method("michel", task=task, abs_at=abs_at, importance_split=importance_split,
               n_importance=len(imp_sents or sentences), normalize=True, step=step, recompute_importance=False)
    return PruningSetup(sentences, imp_sents, T, base)


def importance_study(run, task: Task, base: float, abs_at: str = "token") -> dict:
    """Notebook 08, importance (Michel §4.1): :func:`importance_vs_ablation` on ``run.loaded``.
    Records on ``run`` (:class:`bertology.notebook.Run`) its ``summary`` as
    ``values["importance_vs_ablation"]`` and the key number "Spearman(importance, ablation)"; the
    heads table is left to the caller."""
    imp = importance_vs_ablation(run.loaded, task, base, abs_at=abs_at)
    run.value("importance_vs_ablation", imp["summary"])
    run.key("Spearman(importance, ablation)", imp["summary"]["spearman_raw"])
    return imp


@dataclass
class CurveStudy:
    """:func:`curve_study`: the numbers of heads removed at each step, the named removal orders
    (:func:`orders`), the pruning curves (:func:`curves`) and the heads removable per order and
    seed (:func:`removable_table`)."""

    steps: list[int]
    orders: dict[str, list[tuple[int, int]]]
    curves: pd.DataFrame
    removable: pd.DataFrame

    @property
    def by_importance(self) -> pd.Series:
        """The :attr:`removable` row of the authors' order (layer-normalised gradient importance)."""
        return self.removable[self.removable.order == "gradient importance"].iloc[0]

    @property
    def removed_90(self) -> list[tuple[int, int]]:
        """The heads importance order removes while keeping 90% of the metric, at least one step's
        worth (what :func:`measure_pruning` cuts out)."""
        return self.orders["gradient importance"][:max(int(self.by_importance.removable_90), self.steps[1])]


def curve_study(run, task: Task, importance: dict, base: float, step: float = PRUNE_STEP,
                n_random: int = 1, raw_order: bool = False) -> CurveStudy:
    """Notebook 08, pruning curves (Michel §4.2, Fig. 3): heads of ``run.loaded`` removed in
    :func:`curve_steps` of ``step`` by each order of :func:`orders` (``importance``:
    :func:`importance_vs_ablation`; the raw-importance order only with ``raw_order``) and by
    ``n_random`` random orders (seeded with ``run.seed``). Michel et al.'s Fig. 3 draws the first
    and the ablation order; the random orders are our baseline, noted on ``run``
    (:class:`bertology.notebook.Run`) with their number. Records the key number "heads removable
    at 95% (importance order, share)"; the tables are left to the caller."""
    info = run.info
    steps = curve_steps(info.n_layers * info.n_heads, step)
    named = orders(importance, raw=raw_order)
    if n_random:
        run.note(f"Pruning curves: {n_random} random removal order{'s' if n_random > 1 else ''} (n_random) as a baseline "
                 "of ours; Michel et al.'s Fig. 3 shows the importance and ablation orders only."
                 + ("" if raw_order else " The raw-importance order is drawn with raw_order=True."))
    table = curves(run.loaded, task, named, steps, n_random=n_random, seed=run.seed)
    study = CurveStudy(steps, named, table, removable_table(table, base))
    run.key("heads removable at 95% (importance order, share)",
            study.by_importance.removable_95 / (info.n_layers * info.n_heads))
    return study


def layers_study(run, task: Task, importance: np.ndarray) -> pd.DataFrame | None:
    """Notebook 08, heads versus layers: :func:`layers_vs_heads` of ``run.loaded`` (``importance``:
    the layer-normalised head importance); None where layers cannot be removed alone
    (:func:`unsupported`, e.g. ALBERT), with a note on ``run`` (:class:`bertology.notebook.Run`)."""
    why = unsupported(run.loaded)
    if why:
        run.note(f"Whole-layer removal and physical pruning were not run: {why}.")
        return None
    return layers_vs_heads(run.loaded, task, importance)


def speed_study(run, task: Task, removed: Sequence[tuple[int, int]], repeats: int = 3) -> dict | None:
    """Notebook 08, physical pruning: :func:`measure_pruning` of ``removed`` on ``run.loaded``,
    checked by :func:`check_pruned_equals_masked`; None where heads cannot be cut out
    (:func:`unsupported`; :func:`layers_study` notes it). Records on ``run``
    (:class:`bertology.notebook.Run`) ``values["physical_pruning"]`` and the key number "forward
    speed-up, pruned copy"."""
    if unsupported(run.loaded):
        return None
    speed = check_pruned_equals_masked(measure_pruning(run.loaded, task, removed, repeats=repeats))
    run.value("physical_pruning", speed)
    run.key("forward speed-up, pruned copy", speed["speedup"])
    return speed
