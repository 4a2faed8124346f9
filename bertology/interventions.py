"""The interventions room of the engine: changes to a model that last exactly as long as a ``with``.

* :func:`masked_heads` multiplies head ``h`` of layer ``l`` by ``mask[l, h]`` (0 removes the head,
  a tensor that requires grad makes the gates differentiable, as Michel et al. 2019 need) and
  puts back whatever mask was there before when the block ends, also on an exception, so nested
  blocks work and no caller has to undo anything.
* :func:`skipped_layers` runs the model without some transformer layers (attention + FFN); it lives
  in :mod:`bertology.extract` (whose :func:`~bertology.extract.states_at` runs part of the stack) and
  is re-exported here.
* :func:`plant_attention` (from :mod:`bertology.models`) makes every head attend as a given
  pattern says; it returns a planted copy of the handle rather than a context, since tests build
  a planted model once and use it throughout.

Forward passes themselves stay in :func:`bertology.extract.forward`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .extract import layer_stack, model_of, skipped_layers  # the engine owns the layer stack; re-exported (__all__)
from .models import (layer_head_masks, plant_attention, self_attention_modules,
                     set_head_mask, set_layer_head_masks, use_bertology_attention)

__all__ = ["masked_heads", "skipped_layers", "captured_heads", "layer_stack", "recorded_layers", "resumed_at", "plant_attention",
           "set_head_mask", "head_mask_of"]


def head_mask_of(loaded_or_model) -> list:
    """The mask each layer's self-attention carries now (``None`` entries: no mask)."""
    return layer_head_masks(model_of(loaded_or_model))


@contextmanager
def masked_heads(loaded_or_model, mask: torch.Tensor | np.ndarray | None) -> Iterator[torch.Tensor | None]:
    """Within the block, head ``h`` of layer ``l`` is multiplied by ``mask[l, h]`` (shape
    layers x heads); ``None`` runs the full, unmasked model. Yields the mask as set on the model
    (a tensor in the model's dtype on its device; a tensor already so is used as is, keeping its
    gradient). The previous masks are restored on exit, whatever happens in the block."""
    model = model_of(loaded_or_model)
    previous = head_mask_of(model)
    if mask is not None:
        p = next(model.parameters())
        mask = torch.as_tensor(mask, dtype=p.dtype, device=p.device)
    set_head_mask(model, mask)  # validates the shape before anything changes
    try:
        yield mask
    finally:
        set_layer_head_masks(model, previous)


@contextmanager
def captured_heads(loaded_or_model) -> Iterator[dict]:
    """Within the block, every forward pass records each layer's head outputs before the output
    projection, ``(batch, tokens, heads, head size)``, in the yielded dict keyed by layer (the last
    pass wins). Works for shared attention modules (ALBERT) too, since the layer is known per call."""
    model = model_of(loaded_or_model)
    use_bertology_attention(model)
    mods = set(self_attention_modules(model))
    store: dict[int, torch.Tensor] = {}
    for m in mods:
        m._bertology_capture = store
    try:
        yield store
    finally:
        for m in mods:
            m._bertology_capture = None


@contextmanager
def recorded_layers(loaded_or_model) -> Iterator[list]:
    """Within the block, every forward pass appends to the yielded list the outputs of its
    transformer layers, in depth order (whatever object each layer returns), for
    :func:`resumed_at`. Raises :class:`UnsupportedModelError` where :func:`layer_stack` does."""
    stack = layer_stack(model_of(loaded_or_model))
    calls: list[list] = []

    def record(depth):
        def hook(_module, _args, output):
            if depth == 0:  # a new forward pass starts at the first layer
                calls.append([])
            calls[-1].append(output)
        return hook

    hooks = [m.register_forward_hook(record(d)) for d, m in enumerate(stack.layer)]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


class _Replay(torch.nn.Module):
    """Stands in for the first layers of the stack: returns what they returned on this input."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


@contextmanager
def resumed_at(loaded_or_model, layer: int, output) -> Iterator[torch.nn.Module]:
    """Within the block the encoder starts at transformer layer ``layer``: layers ``0..layer-1``
    are replaced by one stand-in that returns ``output``, what layer ``layer - 1`` returned on the
    same batch (from :func:`recorded_layers`). Exact whenever those layers would compute the same
    again (nothing in them changed, e.g. every removed head sits at ``layer`` or above); the
    saving is their share of the forward pass. ``layer=0`` runs the whole stack. Only the last
    hidden state is right inside the block (not the per-layer states). The stack is put back on exit."""
    encoder = layer_stack(model_of(loaded_or_model))
    full = encoder.layer
    if not 0 <= layer < len(full):
        raise ValueError(f"layer {layer} out of range: the encoder has layers 0..{len(full) - 1}")
    if layer:
        encoder.layer = torch.nn.ModuleList([_Replay(output), *list(full)[layer:]])
    try:
        yield encoder
    finally:
        encoder.layer = full
