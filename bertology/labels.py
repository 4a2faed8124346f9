"""How heads and layers are named in tables and reports (no study logic, no model).

Tables index heads by ``layer, head`` (ints, 0-indexed); the paper notation ``label``
("3-2" = layer 3, head 2, both 1-indexed) comes from :func:`head_label` only.
Layer parameters of notebooks index hidden states (0 = embeddings, ``n_layers`` = last layer)
and count negative values from the top, so ``-1`` is the last layer (:func:`hidden_layer`).
"""
from __future__ import annotations

import numbers


def head_label(layer: int, head: int) -> str:
    """Paper notation: 1-indexed ``layer-head``."""
    return f"{layer + 1}-{head + 1}"


def hidden_layer(layer, n_layers: int) -> int:
    """Index into hidden states (0 = embeddings, ``n_layers`` = last layer) of a layer parameter;
    ``None`` and ``-1`` mean the last layer, other negative values count from the top."""
    if layer is None:
        return n_layers
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not -n_layers - 1 <= layer <= n_layers:
        raise ValueError(f"layer must be an integer in [0, {n_layers}] (0 = embedding layer) or negative from the top "
                         f"(-1 = last), got {layer!r}")
    return int(layer) % (n_layers + 1)
