"""The one extraction engine (its batching room): every forward pass of a loaded model goes
through :func:`forward` here, on batches cut by :func:`buckets_by_length` and padded by
:func:`collate` / :func:`pad_ids` (or all three at once, :func:`padded_batches`).

Analyses ask :func:`extract` for word-level (or token-level) attention and hidden states and
never run the model themselves. Maps are handed to *reducers* one input at a time and then
dropped, so memory stays flat however large the corpus. :func:`states` is the one call for
hidden-state vectors (chosen layers, pooled per word or per piece). An optional on-disk cache
(safetensors, no pickle) keyed by model + data + options + code version replays the results
without running the model. The other two rooms: :mod:`bertology.interventions` (head masks,
skipped layers, planted attention) and :mod:`bertology.scorers` (cloze, top-k, PLL).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import align
from .align import Encoding
from .io import atomic_write_json
from .models import ATTN_IMPL, LoadedModel, UnsupportedModelError
from .profiling import timed

log = logging.getLogger(__name__)

#: Bump when what is written into the cache changes meaning.
CACHE_VERSION = "1"


@dataclass
class Item:
    """What a reducer receives for one input."""

    index: int  # position of the input in the list given to extract()
    encoding: Encoding  # units: words + special tokens (or pieces, at token level)
    attention: np.ndarray | None  # (layers, heads, U, U); rows sum to 1
    hidden: np.ndarray | None  # (layers + 1, U, D); [0] = embeddings


class Reducer(Protocol):
    def update(self, item: Item) -> None: ...

    def result(self): ...


@dataclass
class ExtractStats:
    n_inputs: int
    n_truncated: int
    n_tokens: int
    seconds: float
    from_cache: bool
    cache_path: str | None = None


Input = Sequence[str] | tuple[Sequence[str], Sequence[str]]


def encode_inputs(tokenizer, inputs: Iterable[Input], max_length: int) -> list[Encoding]:
    """Encode word lists, or ``(words_a, words_b)`` pairs, into :class:`Encoding` objects
    (:func:`bertology.align.encode_many`: batched tokenizer calls)."""
    parsed = []
    for x in inputs:
        if isinstance(x, tuple) and len(x) == 2 and not isinstance(x[0], str):
            parsed.append((list(x[0]), list(x[1])))
        else:
            parsed.append((list(x), None))
    return align.encode_many(tokenizer, parsed, max_length)


def as_encodings(loaded: LoadedModel, inputs) -> list[Encoding]:
    """``inputs`` as encodings: already-encoded inputs are kept, word lists / pairs are encoded."""
    if inputs and isinstance(inputs[0], Encoding):
        return list(inputs)
    return encode_inputs(loaded.tokenizer, inputs, loaded.info.max_length)


#: What one more batch costs on a CPU, in padded tokens: a forward pass over ``B x T`` tokens takes
#: about ``BATCH_OVERHEAD + B * T`` token-times. Measured on a 2-core AMD EPYC (Zen 2), float32,
#: ``benchmarks/bench_buckets.py``: bert-base 48 ms + 1.30 ms per token (37 tokens), MiniLM-L6
#: 8.2 ms + 0.180 ms per token (45 tokens).
BATCH_OVERHEAD = 48
#: The same on a GPU, where a pass over a few thousand tokens costs about what a pass over a few
#: does (kernel launches): batches are filled as before unless padding passes this many tokens.
#: Not measured here (no GPU was lent); it keeps the GPU's batches as they were.
GPU_BATCH_OVERHEAD = 4096


def batch_overhead(device) -> int:
    """The ``overhead`` of :func:`buckets_by_length` for passes on ``device``."""
    return BATCH_OVERHEAD if torch.device(device).type == "cpu" else GPU_BATCH_OVERHEAD


def length_buckets(encodings: Sequence[Encoding], batch_size: int = 32, max_tokens: int = 8192,
                   overhead: int = BATCH_OVERHEAD) -> list[list[int]]:
    """Group inputs of similar length into batches of at most ``batch_size`` inputs and
    ``max_tokens`` padded tokens (batch x longest), cut where padding costs more than another
    batch would (:func:`buckets_by_length`)."""
    return buckets_by_length([e.n_tokens for e in encodings], batch_size, max_tokens, overhead)


def buckets_by_length(lengths: Sequence[int], batch_size: int, max_tokens: int,
                      overhead: int = BATCH_OVERHEAD) -> list[list[int]]:
    """Indices of ``lengths`` in batches of similar length, at the least estimated cost.

    The inputs are sorted by length (ties by index) and cut into consecutive runs, each of at
    most ``batch_size`` inputs and ``max_tokens`` padded tokens (an input longer than that runs
    alone). Of all such cuts the one with the fewest padded tokens plus ``overhead`` per batch
    is taken (dynamic programming over the sorted lengths; ties go to fewer batches). Filling
    every batch up to ``batch_size`` instead pads 32 EWT dev sentences into one batch of
    2,016 tokens for 913 real ones; the cheapest cut runs them in 5 batches of 1,034 tokens.
    ``overhead=0`` would give every distinct length a batch; a very large one fills batches.
    """
    if overhead < 0:
        raise ValueError(f"overhead must be >= 0, got {overhead!r}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    ls = [int(lengths[i]) for i in order]
    n = len(ls)
    cost = np.zeros(n + 1)  # cost[j]: the cheapest cut of the first j sorted inputs (exact in float64)
    start = [0] * (n + 1)  # where the last batch of that cut begins
    for j in range(1, n + 1):
        longest = ls[j - 1]  # the last batch holds sorted inputs i .. j-1, i from j-most to j-1
        most = min(batch_size, j, max(1, max_tokens // longest))
        c = cost[j - most:j] + (overhead + longest * np.arange(most, 0, -1))
        best = int(np.argmin(c))  # the first least: the largest batch among equals
        cost[j], start[j] = c[best], j - most + best
    batches, j = [], n
    while j > 0:
        batches.append(order[start[j]:j])
        j = start[j]
    return batches[::-1]


def pad_ids(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists with 0 into ``(input_ids, attention_mask)`` LongTensors [B, max len]."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    return ids, mask


def padded_batches(seqs: Sequence[Sequence[int]], batch_size: int, max_tokens: int = 16384, *,
                   progress: bool = False, desc: str = "batches", min_bar: int = 5,
                   overhead: int = BATCH_OVERHEAD) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Token-id lists in length buckets (:func:`buckets_by_length`; ``overhead``: see
    :func:`batch_overhead`), each padded by :func:`pad_ids`: yields ``(indices, input_ids,
    attention_mask)``. A progress bar shows with ``progress`` when there are at least ``min_bar``
    batches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batches = buckets_by_length([len(s) for s in seqs], batch_size, max_tokens, overhead)
    for batch in tqdm(batches, desc=desc, disable=not progress or len(batches) < min_bar, leave=False):
        ids, mask = pad_ids([seqs[i] for i in batch])
        yield batch, ids, mask


#: Keys of a batch dict that are passed to the model (anything else, e.g. labels, stays behind).
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "position_ids")


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder inside a model with a task head (``model.bert``), or the model itself."""
    return getattr(model, getattr(model, "base_model_prefix", ""), model)


def model_of(loaded_or_model: LoadedModel | torch.nn.Module) -> torch.nn.Module:
    """The model inside a :class:`LoadedModel` handle, or the module itself (e.g. a pruned copy)."""
    return loaded_or_model.model if isinstance(loaded_or_model, LoadedModel) else loaded_or_model


def _precision_of(loaded) -> str:
    if isinstance(loaded, LoadedModel):
        return loaded.info.precision
    return getattr(loaded, "bertology_precision", "float32")


def _running(precision: str, device: torch.device, grad: bool):
    """The context of every model call: inference mode unless ``grad``, timed, autocast if asked.
    Passes with gradients skip float16 autocast (no loss scaling here, so small gradients such as
    Michel's importances would underflow): they run in float32; bfloat16 keeps float32's range."""
    stack = ExitStack()
    stack.enter_context(torch.enable_grad() if grad else torch.inference_mode())
    stack.enter_context(timed("forward", device))
    if precision != "float32" and not (grad and precision == "float16"):
        stack.enter_context(torch.autocast(device.type, dtype=getattr(torch, precision)))
    return stack


def forward(loaded: LoadedModel | torch.nn.Module, batch: dict, *, attention: bool = False,
            hidden_states: bool = False, grad: bool = False, base: bool = False):
    """The one forward pass: run ``loaded`` (a :class:`LoadedModel` or a bare model, e.g. a pruned
    copy) on a collated ``batch`` and return the model's output object.

    Only the :data:`MODEL_INPUTS` keys of ``batch`` are passed, moved to the model's device.
    ``attention`` / ``hidden_states`` ask for all layers' maps / states; ``base=True`` runs the
    encoder without its task head (``last_hidden_state`` instead of ``logits``). Runs under
    ``torch.inference_mode`` unless ``grad=True`` (gradients with respect to attention, head gates
    or a probe's input). A model loaded with ``precision="bfloat16"``/``"float16"``
    (:func:`bertology.models.set_precision`) runs under ``torch.autocast``; its floating outputs
    come back as float32, except, with ``grad=True``, the attention maps and hidden states (the
    graph's own tensors, so that gradients with respect to them exist).
    """
    model = model_of(loaded)
    precision = _precision_of(loaded)
    if base:
        model = base_of(model)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS and v is not None}
    with _running(precision, device, grad):
        out = model(**inputs, output_attentions=attention, output_hidden_states=hidden_states)
    if precision != "float32":
        # With gradients, the attention maps and hidden states may be what a caller differentiates
        # with respect to: they stay the tensors of the graph (a float32 copy of a bfloat16 map is
        # not what the loss depends on), and the caller casts what it reads.
        out = _as_float32(out, keep=("attentions", "hidden_states") if grad else ())
    if attention and (out.attentions is None or out.attentions[0] is None):
        raise RuntimeError(
            "the model returned no attention maps; load it with attn_implementation='eager' "
            "(bertology.models.load_model does)"
        )
    return out


#: Attributes that hold a masked-LM head mapping each position's last state to vocabulary logits
#: in one module (BERT ``cls``, RoBERTa ``lm_head``, ALBERT ``predictions``).
MLM_HEADS = ("cls", "lm_head", "predictions")

#: Heads split over several modules of the model, applied in this order (DistilBERT: transform,
#: activation, LayerNorm, projector; ELECTRA's generator: dense-activation-LayerNorm, projector).
SPLIT_MLM_HEADS = (("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
                   ("generator_predictions", "generator_lm_head"))


class _SplitHead:
    """A masked-LM head kept in several modules of the model, called as one (no module of its own,
    so it adds nothing to the model's parameters or state)."""

    def __init__(self, parts):
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


def mlm_head(model: torch.nn.Module):
    """The masked-LM head of ``model`` as one callable mapping last-layer states ``[..., d]`` to
    logits: a module of :data:`MLM_HEADS`, or the parts of :data:`SPLIT_MLM_HEADS` in order; None
    when the model has no head that we know."""
    one = next((getattr(model, a) for a in MLM_HEADS if isinstance(getattr(model, a, None), torch.nn.Module)), None)
    if one is not None:
        return one
    for names in SPLIT_MLM_HEADS:
        parts = [getattr(model, n, None) for n in names]
        if all(callable(p) for p in parts) and isinstance(parts[-1], torch.nn.Linear):
            return _SplitHead(parts)
    return None


def logits_at(loaded: LoadedModel | torch.nn.Module, batch: dict, rows: torch.Tensor, cols: torch.Tensor, *,
              grad: bool = False) -> torch.Tensor:
    """Masked-LM logits ``[N, V]`` at the positions ``(rows[i], cols[i])`` of ``batch`` only: the
    head maps those positions (it maps each position on its own, so these are the rows of the full
    ``logits``; on a bert-base-sized model the head over every position costs about a quarter of
    the forward pass), and the last layer computes them only (:func:`states_at`). Falls back to
    the full logits for heads :func:`mlm_head` does not know. Same context as :func:`forward`."""
    model = model_of(loaded)
    if mlm_head(model) is None:
        return forward(loaded, batch, grad=grad).logits[rows, cols]
    return head_logits(loaded, states_at(loaded, batch, rows, cols, grad=grad), grad=grad)


def layer_stack(model: torch.nn.Module):
    """The module whose ``layer`` attribute holds the stack of transformer blocks (BERT-style
    ``encoder``, DistilBERT's ``transformer``); ALBERT has none."""
    base = base_of(model)
    for owner in (getattr(base, "encoder", None), getattr(base, "transformer", None)):
        if owner is not None and isinstance(getattr(owner, "layer", None), torch.nn.ModuleList):
            return owner
    raise UnsupportedModelError(f"{type(model).__name__} keeps no list of transformer layers that can be skipped "
                                "(ALBERT shares one layer group across depth)")


@contextmanager
def skipped_layers(loaded_or_model, layers: Sequence[int]) -> Iterator[torch.nn.Module]:
    """Within the block the encoder runs without the transformer layers ``layers`` (0-indexed);
    the full stack is put back on exit, also on an exception."""
    encoder = layer_stack(model_of(loaded_or_model))
    full = encoder.layer
    drop = {int(x) for x in layers}
    bad = sorted(x for x in drop if not 0 <= x < len(full))
    if bad:
        raise ValueError(f"layers {bad} out of range: the encoder has layers 0..{len(full) - 1}")
    encoder.layer = torch.nn.ModuleList([m for i, m in enumerate(full) if i not in drop])
    try:
        yield encoder
    finally:
        encoder.layer = full


#: Attention implementations :func:`states_at` computes a layer's chosen rows with (they take
#: queries of any length and a broadcast padding mask).
ROWS_ATTENTION = ("eager", "sdpa", ATTN_IMPL)


def _rows_layer(model: torch.nn.Module, layer: torch.nn.Module) -> bool:
    """Whether ``layer`` is a BERT-style encoder block (BERT, RoBERTa, ELECTRA: ``attention.self``
    with ``query``/``key``/``value``, ``attention.output``, ``intermediate``, ``output``) that
    :func:`states_at` can compute at chosen rows: absolute positions, no cross-attention, no
    planted pattern or head-output capture, eval mode."""
    att = getattr(layer, "attention", None)
    sa = getattr(att, "self", None)
    if sa is None or not all(isinstance(getattr(sa, k, None), torch.nn.Linear) for k in ("query", "key", "value")):
        return False
    if not all(hasattr(x, k) for x, k in ((att, "output"), (layer, "intermediate"), (layer, "output"))):
        return False
    config = getattr(sa, "config", None) or model.config
    return (getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
            and not getattr(layer, "add_cross_attention", False) and not getattr(config, "is_decoder", False)
            and config._attn_implementation in ROWS_ATTENTION and hasattr(sa, "attention_head_size")
            and getattr(sa, "_bertology_planted", None) is None and getattr(sa, "_bertology_capture", None) is None
            and not model.training)


def _layer_at(layer: torch.nn.Module, below: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
              cols: torch.Tensor) -> torch.Tensor:
    """The output ``[N, d]`` of the BERT-style block ``layer`` (:func:`_rows_layer`) at ``(rows[i],
    cols[i])`` given its input ``below`` ``[B, T, d]`` and the padding ``mask`` ``[B, T]``: keys and
    values of every position of those rows' sequences, queries, output projection and
    feed-forward at the chosen positions only (each position's output depends on the others only
    through keys and values). The attention is the model's own implementation, so head masks apply."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    seqs, where = torch.unique(rows, return_inverse=True)  # the sequences that have a chosen row
    order = torch.argsort(where, stable=True)
    counts = torch.bincount(where, minlength=len(seqs))
    start = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(where)
    slot[order] = torch.arange(len(where), device=where.device) - start[where[order]]
    q_at = torch.zeros(len(seqs), int(counts.max()), dtype=torch.long, device=below.device)
    q_at[where, slot] = cols  # padded with position 0, whose rows are dropped
    kv = below[seqs]
    q_in = kv[torch.arange(len(seqs), device=below.device)[:, None], q_at]
    sa = layer.attention.self
    d = sa.attention_head_size

    def heads(x):
        return x.view(*x.shape[:2], -1, d).transpose(1, 2)

    additive = (1.0 - mask[seqs].to(kv.dtype))[:, None, None, :] * torch.finfo(kv.dtype).min
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager_attention_forward)
    ctx, _ = attend(sa, heads(sa.query(q_in)), heads(sa.key(kv)), heads(sa.value(kv)), additive, dropout=0.0,
                    scaling=getattr(sa, "scaling", d ** -0.5))
    a = layer.attention.output(ctx.reshape(*q_in.shape[:2], -1), q_in)
    out = layer.output(layer.intermediate(a), a)
    return out[where, slot]


def states_at(loaded: LoadedModel | torch.nn.Module, batch: dict, rows: torch.Tensor, cols: torch.Tensor, *,
              layer: int | None = None, grad: bool = False) -> torch.Tensor:
    """Hidden states ``[N, d]`` of ``layer`` (0 = embeddings, None = the last) at the positions
    ``(rows[i], cols[i])`` of ``batch``, computing no more than they need: the layers above
    ``layer`` do not run, and a BERT-style ``layer`` (:func:`_rows_layer`: BERT, RoBERTa, ELECTRA)
    computes only the chosen positions' queries, output projection and feed-forward (with every
    position's keys and values), about 10/12 of that layer's work saved where one position per
    sequence is read. Other models run the stack up to ``layer`` (DistilBERT) or whole (ALBERT).
    The same numbers as the full pass up to float rounding. Same context as :func:`forward`."""
    model = model_of(loaded)
    config = model.config
    n_layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    if layer is not None and (isinstance(layer, bool) or not 0 <= int(layer) <= n_layers):
        raise ValueError(f"layer must be in [0, {n_layers}], got {layer!r}")
    try:
        stack = layer_stack(model).layer
    except UnsupportedModelError:  # ALBERT: the stack runs whole
        stack = None
    # layer None: the top of the stack as it is now (a caller may have cut or replayed part of it);
    # a given layer counts from the embeddings of the whole stack
    if stack is None or (layer is not None and len(stack) != n_layers):
        out = forward(loaded, batch, base=True, grad=grad, hidden_states=layer is not None)
        hidden = out.last_hidden_state if layer is None else out.hidden_states[int(layer)]
        return hidden[rows.to(hidden.device), cols.to(hidden.device)]
    top = len(stack) if layer is None else int(layer)
    last = stack[top - 1] if top else None
    rows_only = last is not None and _rows_layer(model, last)
    run = top - 1 if rows_only else top
    with skipped_layers(model, range(run, len(stack))):
        below = forward(loaded, batch, base=True, grad=grad).last_hidden_state
    device = below.device
    rows, cols = rows.to(device), cols.to(device)
    if not rows_only or not len(rows):  # (no row: nothing to compute at the top layer)
        return below[rows, cols] if len(rows) else below.new_zeros(0, below.shape[-1])
    with _running(_precision_of(loaded), device, grad):
        mask = batch.get("attention_mask")
        mask = torch.ones(below.shape[:2], device=device) if mask is None else mask.to(device)
        out = _layer_at(last, below, mask, rows, cols)
    return out.float() if _precision_of(loaded) != "float32" else out


def head_logits(loaded: LoadedModel | torch.nn.Module, states: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
    """The masked-LM head of ``loaded`` (:func:`mlm_head`, which must know it) on last-layer
    ``states`` ``[N, d]`` (the positions to score only): logits ``[N, V]``, float32, in the
    precision and gradient context of :func:`forward`."""
    model = model_of(loaded)
    head = mlm_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no masked-LM head that we know (see MLM_HEADS, SPLIT_MLM_HEADS)")
    precision = _precision_of(loaded)
    with _running(precision, states.device, grad):
        out = head(states)
    return out.float() if precision != "float32" else out


def _as_float32(out, keep=()):
    """A model output with every floating tensor (also inside tuples) cast to float32, except the
    fields named in ``keep``."""
    def cast(v):
        if torch.is_tensor(v) and v.is_floating_point():
            return v.float()
        if isinstance(v, tuple):
            return tuple(cast(t) for t in v)
        return v

    for k in list(out.keys()):
        if k not in keep:
            out[k] = cast(out[k])
    return out


def collate(encodings: Sequence[Encoding], device) -> dict[str, torch.Tensor]:
    """Pad a batch into model inputs (pad id 0 is masked out by ``attention_mask``)."""
    n = max(e.n_tokens for e in encodings)
    ids = torch.zeros(len(encodings), n, dtype=torch.long)
    tt = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for b, e in enumerate(encodings):
        ids[b, : e.n_tokens] = torch.as_tensor(e.input_ids)
        tt[b, : e.n_tokens] = torch.as_tensor(e.token_type_ids)
        mask[b, : e.n_tokens] = 1
    return {"input_ids": ids.to(device), "token_type_ids": tt.to(device), "attention_mask": mask.to(device)}


def extract(
    loaded: LoadedModel,
    inputs: Sequence[Input] | Sequence[Encoding],
    reducers: Sequence[Reducer] | Reducer,
    *,
    level: str = "word",
    attention: bool = True,
    hidden_states: bool = False,
    pool: str = "mean",
    batch_size: int = 32,
    max_tokens: int = 8192,
    cache_dir: str | os.PathLike | None = None,
    cache_dtype: str = "float32",
    progress: bool = True,
    desc: str = "extract",
) -> ExtractStats:
    """Run the model over ``inputs`` and stream per-input maps to ``reducers``.

    ``level``: ``"word"`` (Clark et al. §4.1 word-level maps, special tokens as own units) or
    ``"token"`` (word pieces). ``hidden_states`` adds (layers+1) x U x D states pooled by
    ``pool`` (mean/first/last piece). With ``cache_dir`` the maps are stored as safetensors
    shards (attention in ``cache_dtype``, states in float32) and replayed on the next call with
    the same model, data, options and code version.
    """
    if level not in ("word", "token"):
        raise ValueError(f"level must be 'word' or 'token', not {level!r}")
    if not attention and not hidden_states:
        raise ValueError("nothing to extract: ask for attention and/or hidden_states")
    reducers = [reducers] if hasattr(reducers, "update") else list(reducers)
    encodings = as_encodings(loaded, inputs)
    if not encodings:
        raise ValueError("no inputs to extract from")
    n_trunc = align.warn_truncated(encodings)
    units = encodings if level == "word" else [align.token_level(e) for e in encodings]
    t0 = time.perf_counter()
    cache = None
    if cache_dir is not None:
        key = _cache_key(loaded, encodings, level, attention, hidden_states, pool, cache_dtype)
        cache = FeatureCache(Path(cache_dir) / key)
        if cache.valid():
            for item in tqdm(cache.read(units), total=len(units), desc=f"{desc} (cache)", disable=not progress):
                for r in reducers:
                    r.update(item)
            return ExtractStats(len(units), n_trunc, sum(e.n_tokens for e in encodings),
                                time.perf_counter() - t0, True, str(cache.path))
    writer = cache.writer(cache_dtype) if cache is not None else None
    batches = length_buckets(encodings, batch_size, max_tokens, batch_overhead(loaded.device))
    bar = tqdm(total=len(units), desc=desc, disable=not progress)
    try:
        for batch in batches:
            for item in _forward(loaded, [units[i] for i in batch], batch, level, attention, hidden_states, pool):
                for r in reducers:
                    r.update(item)
                if writer is not None:
                    writer.add(item)
            if writer is not None:
                writer.flush()
            bar.update(len(batch))
    finally:
        bar.close()
    if writer is not None:
        writer.commit()
    return ExtractStats(len(units), n_trunc, sum(e.n_tokens for e in encodings),
                        time.perf_counter() - t0, False, str(cache.path) if cache else None)


class _Keep:
    """Reducer that keeps every item (for a handful of inputs only)."""

    def __init__(self):
        self.items: list[Item] = []

    def update(self, item: Item) -> None:
        self.items.append(item)

    def result(self) -> list[Item]:
        return self.items


def attention_of(loaded: LoadedModel, text: str, text_b: str | None = None, level: str = "token") -> Item:
    """One input's attention through the engine: ``text`` (and ``text_b`` for a pair) split on
    whitespace into words; ``level="token"`` gives word pieces, ``"word"`` Clark's word-level maps.
    Returns the :class:`Item` (``.attention`` is layers x heads x U x U, ``.encoding.tokens`` or
    ``.encoding.unit_labels()`` the labels)."""
    if not isinstance(text, str) or not text.split():
        raise ValueError("text must be a non-empty string")
    words = text.split()
    inp = (words, text_b.split()) if text_b else words
    keep = _Keep()
    extract(loaded, [inp], keep, level=level, progress=False)
    return keep.items[0]


#: Bump when what :func:`states` stores in its cache changes meaning.
STATES_VERSION = "1"
POOLS = ("mean", "first", "last")
UNITS = ("word", "piece")


def resolve_layers(loaded: LoadedModel, layers) -> list[int]:
    """Hidden-state indices (0 = embeddings, ``n_layers`` = last layer) from ``None`` (all), one
    int or a sequence of ints; negative numbers count from the top (``-1`` = last layer)."""
    n = loaded.info.n_layers
    many = layers is None or not isinstance(layers, (int, np.integer))
    seq = list(range(n + 1)) if layers is None else (list(layers) if many else [layers])
    out = []
    for k in seq:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not -n - 1 <= k <= n:
            raise ValueError(f"layer must be an integer in [0, {n}] (0 = embedding layer) or negative from the "
                             f"top, got {k!r}")
        out.append(int(k) % (n + 1))
    if not out:
        raise ValueError("layers is empty")
    return out


class _Select:
    """Reducer keeping the chosen layers and units of each input's hidden states: one array per
    input, or (``offsets`` given) rows ``offsets[i]:offsets[i + 1]`` of one preallocated array."""

    def __init__(self, n: int, layers: list[int], specials: bool, dtype, offsets=None, dim: int = 0):
        self.layers, self.specials, self.dtype = layers, specials, np.dtype(dtype)
        self.offsets = offsets
        self.out: list[np.ndarray | None] = [None] * n
        self.flat = None if offsets is None else np.zeros((len(layers), int(offsets[-1]), dim), dtype=np.float32)

    def update(self, item: Item) -> None:
        h = item.hidden[self.layers]
        if not self.specials:
            h = h[:, item.encoding.word_units]
        # round through the storage dtype, so a fresh run gives what a cache replay gives
        self.put(item.index, h.astype(self.dtype))

    def put(self, i: int, h: np.ndarray) -> None:
        if self.flat is None:
            self.out[i] = np.ascontiguousarray(h, dtype=np.float32)
        else:
            self.flat[:, self.offsets[i]:self.offsets[i + 1]] = h

    def get(self, i: int) -> np.ndarray:
        return self.out[i] if self.flat is None else self.flat[:, self.offsets[i]:self.offsets[i + 1]]

    def result(self):
        return self.out if self.flat is None else self.flat


def states(
    loaded: LoadedModel,
    inputs: Sequence[Input] | Sequence[Encoding],
    *,
    layers: int | Sequence[int] | None = None,
    pool: str = "mean",
    unit: str = "word",
    specials: bool = False,
    concat: bool = False,
    batch_size: int = 32,
    max_tokens: int = 8192,
    cache: str | os.PathLike | None = None,
    cache_dtype: str = "float32",
    progress: bool = True,
    desc: str = "states",
) -> list[np.ndarray] | np.ndarray:
    """Hidden-state vectors of every input: a list with one float32 array
    ``(len(layers), units, hidden)`` per input, in input order; with ``concat=True`` one array
    ``(len(layers), total units, hidden)``, the inputs' units one after another (filled in place,
    so a large corpus is held once).

    ``layers``: ``None`` (all: 0 = embeddings .. n_layers), an int or a list (``-1`` = last).
    ``unit="word"``: one vector per word, its pieces pooled by ``pool`` (``"mean"``, ``"first"``
    or ``"last"`` piece); ``unit="piece"``: one per word piece (``pool`` unused). Special tokens
    ([CLS], [SEP]) are left out unless ``specials=True``. With ``cache`` (a directory) the result
    is stored as safetensors keyed by model, data, options and :data:`STATES_VERSION` and replayed
    next time; ``cache_dtype="float16"`` halves it on disk (the arrays then carry float16
    precision, in a fresh run too).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, not {pool!r}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    if cache_dtype not in ("float32", "float16"):
        raise ValueError(f"cache_dtype must be 'float32' or 'float16', not {cache_dtype!r}")
    which = resolve_layers(loaded, layers)
    encodings = as_encodings(loaded, inputs)
    if not encodings:
        raise ValueError("no inputs to take states of")
    level = "word" if unit == "word" else "token"
    pool = pool if unit == "word" else "mean"
    units = encodings if level == "word" else [align.token_level(e) for e in encodings]
    offsets = None
    if concat:
        sizes = [e.n_units if specials else len(e.word_units) for e in units]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    keep = _Select(len(encodings), which, specials, cache_dtype, offsets, loaded.model.config.hidden_size)
    store = None
    if cache is not None:
        key = _cache_key(loaded, encodings, "states", STATES_VERSION, level, which, pool, specials, cache_dtype)
        store = FeatureCache(Path(cache) / f"states-{key}")
        if store.valid():
            for item in store.read(units):
                keep.put(item.index, item.hidden)
            return keep.result()
    extract(loaded, encodings, keep, level=level, attention=False, hidden_states=True, pool=pool,
            batch_size=batch_size, max_tokens=max_tokens, progress=progress, desc=desc)
    if store is not None:
        writer = store.writer("float32", hidden_dtype=cache_dtype)
        for i, e in enumerate(encodings):
            writer.add(Item(i, e, None, keep.get(i)))
            if len(writer.indices) >= 1024:
                writer.flush()
        writer.commit()
    return keep.result()


def _forward(loaded, encs, indices, level, attention, hidden_states, pool) -> Iterator[Item]:
    device = loaded.device
    batch = collate(encs, device)
    with torch.inference_mode():
        # the encoder only: a masked-LM head would map every position to vocabulary logits that
        # nothing here reads (on bert-base about a quarter more work, and [B, T, V] floats of memory)
        out = forward(loaded, batch, attention=attention, hidden_states=hidden_states, base=True)
        att = hid = None
        if level == "word":
            to, frm = align.pooling_matrices(encs, batch["input_ids"].shape[1], device)
            if attention:
                att = align.word_level_attention(torch.stack(out.attentions, 1), to, frm)
            if hidden_states:
                hid = align.word_level_states(torch.stack(out.hidden_states, 1), to, frm, encs, pool)
        else:
            att = torch.stack(out.attentions, 1) if attention else None
            hid = torch.stack(out.hidden_states, 1) if hidden_states else None
        att = att.float().cpu().numpy() if att is not None else None
        hid = hid.float().cpu().numpy() if hid is not None else None
    for b, (e, i) in enumerate(zip(encs, indices)):
        u = e.n_units
        yield Item(
            index=i,
            encoding=e,
            attention=None if att is None else att[b, :, :, :u, :u],
            hidden=None if hid is None else hid[b, :, :u],
        )


# ----------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$BERTOLOGY_CACHE/features`` (default ``~/.cache/bertology/features``)."""
    root = os.environ.get("BERTOLOGY_CACHE") or Path.home() / ".cache" / "bertology"
    return Path(root) / "features"


def _cache_key(loaded, encodings, *options) -> str:
    h = hashlib.sha256()
    precision = [] if loaded.info.precision == "float32" else [loaded.info.precision]  # float32 keys unchanged
    h.update(json.dumps([CACHE_VERSION, loaded.info.name, loaded.info.revision, *precision, *options]).encode())
    for e in encodings:  # the data as the model sees it: ids plus the unit map
        h.update(e.input_ids.tobytes())
        h.update(e.token_type_ids.tobytes())
        h.update(e.unit_of_token.tobytes())
    return h.hexdigest()[:24]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FeatureCache:
    """A directory of safetensors shards plus ``index.json`` (shard names and sha256), written last.

    A missing index means an unfinished entry; a shard whose sha256 differs means corruption:
    either way the entry is discarded and recomputed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def valid(self) -> bool:
        index = self.path / "index.json"
        if not index.exists():
            if self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
            return False
        try:
            meta = json.loads(index.read_text())
            ok = all(_sha256(self.path / s["file"]) == s["sha256"] for s in meta["shards"])
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            log.warning("feature cache entry %s is corrupt; recomputing it", self.path)
            shutil.rmtree(self.path, ignore_errors=True)
        return ok

    def read(self, encodings: Sequence[Encoding]) -> Iterator[Item]:
        from safetensors.numpy import load_file

        meta = json.loads((self.path / "index.json").read_text())
        for shard in meta["shards"]:
            arrays = load_file(self.path / shard["file"])
            for i in shard["indices"]:
                att, hid = arrays.get(f"{i}.attention"), arrays.get(f"{i}.hidden")
                yield Item(
                    index=i,
                    encoding=encodings[i],
                    attention=None if att is None else att.astype(np.float32),
                    hidden=None if hid is None else hid.astype(np.float32),
                )

    def writer(self, dtype: str, hidden_dtype: str = "float32") -> "_CacheWriter":
        return _CacheWriter(self.path, dtype, hidden_dtype)


class _CacheWriter:
    """Writes an entry in a private temporary folder and renames it into place whole.

    Several processes may write the same key at once (workflow jobs of one model): each has
    its own folder, the first rename wins, a later writer finding the entry in place drops its
    copy (same key, same features), so readers see a complete entry or none, never a mix.
    """

    def __init__(self, path: Path, dtype: str, hidden_dtype: str = "float32"):
        import tempfile

        self.final = path
        self.hidden_dtype = np.dtype(hidden_dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
        self.dtype = np.dtype(dtype)
        self.pending: dict[str, np.ndarray] = {}
        self.indices: list[int] = []
        self.shards: list[dict] = []

    def add(self, item: Item) -> None:
        if item.attention is not None:
            self.pending[f"{item.index}.attention"] = np.ascontiguousarray(item.attention, dtype=self.dtype)
        if item.hidden is not None:
            self.pending[f"{item.index}.hidden"] = np.ascontiguousarray(item.hidden, dtype=self.hidden_dtype)
        self.indices.append(item.index)

    def flush(self) -> None:
        from safetensors.numpy import save_file

        if not self.indices:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        save_file(self.pending, self.tmp / name)
        self.shards.append({"file": name, "indices": self.indices, "sha256": _sha256(self.tmp / name)})
        self.pending, self.indices = {}, []

    def commit(self) -> None:
        self.flush()
        atomic_write_json(self.tmp / "index.json", {"version": CACHE_VERSION, "shards": self.shards})
        try:
            if (self.final / "index.json").exists():
                raise FileExistsError(self.final)  # another writer finished first
            if self.final.exists():  # a leftover without index (a writer of an older version)
                shutil.rmtree(self.final, ignore_errors=True)
            os.replace(self.tmp, self.final)  # a directory rename fails if the target is non-empty
        except OSError:
            if not (self.final / "index.json").exists():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
