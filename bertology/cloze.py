"""The shared cloze engine: log-probabilities of words at ``[MASK]`` positions, and sentence PLL.

Every experiment that asks a model to fill a blank (LAMA-style probes, Ettinger 2020, agreement,
Wallace et al. 2019, BLiMP; Rogers et al. 2020 §3–4) goes through one :class:`Scorer`:

* ``source="mlm"``: the model's own masked-LM head (what the papers use);
* ``source="readout"``: a small MLM head *fitted by us* on frozen states of one layer
  (:mod:`bertology.readout`), for encoders shipped without a head (the offline default MiniLM) and
  to ask at which layer an answer becomes decodable;
* ``source="control"``: a randomly initialised BertForMaskedLM with the same config and tokenizer.

Reports must print :attr:`Scorer.label` next to every number, so a fitted readout is never
mistaken for the model's own MLM head.

Method notes
------------
* **Single-piece targets** are scored exactly: ``log p(target | context)`` at the one mask.
* **Multi-piece targets** (``multi_piece="sequential"``): the mask is widened to as many masks as
  the target has word pieces and the pieces are filled in left to right; the target's score is
  ``sum_j log p(piece_j | context, piece_1..piece_{j-1}, [MASK] x (n-j))``. This is a proper
  chain-rule probability under a left-to-right unmasking order (one of several conventions; it is
  what e.g. Kassner & Schütze and the LAMA multi-token follow-ups do). ``multi_piece="skip"`` gives
  such targets ``NaN`` and counts them (``ClozeResult.n_skipped``), as Goldberg (2019) and
  LAMA (Petroni et al. 2019) do by keeping only single-piece targets.
* **Pseudo-log-likelihood** (Salazar et al. 2020, "Masked Language Model Scoring", §2.1):
  ``PLL(W) = sum_t log P(w_t | W \\ t)``, masking each word piece of the sentence in turn (special
  tokens excluded). All masked copies of many sentences are batched together.

The functions (:func:`cloze`, :func:`topk`, :func:`pll`, also methods of every :class:`Scorer`)
live in :mod:`bertology.scorers`, the engine's scorers room, and are re-exported here. Batches are
length-bucketed by :func:`bertology.extract.padded_batches`, forward passes run through
:func:`bertology.extract.forward` (``torch.inference_mode``) on the scorer's device, and only the
rows at masked positions go through the (large) vocabulary projection.
"""
from __future__ import annotations

from .models import LoadedModel
from .scorers import (  # noqa: F401  (re-exported: the cloze API lives in the scorers room)
    MASK,
    MULTI_PIECE,
    ClozeResult,
    MLMScorer,
    Scorer,
    cloze,
    control_scorer,
    encode_masked,
    mlm_scorer,
    pll,
    topk,
    word_pieces,
)

SOURCES = ("auto", "mlm", "readout", "control")


# --------------------------------------------------------------------------- choosing a scorer
# Scorer, its sources and the cloze / top-k / PLL functions live in bertology.scorers.


def readout_scorer(loaded: LoadedModel, layer: int | None = None, cache_dir=None, **fit_kwargs) -> Scorer:
    """A fitted readout head on ``layer`` (default: last): the shipped head when it matches the model,
    else a cached one, else fitted now (see :func:`bertology.readout.get_readout`)."""
    from .readout import ReadoutScorer, get_readout

    layer = loaded.info.n_layers if layer is None else int(layer)
    head, meta = get_readout(loaded, layer, cache_dir=cache_dir, **fit_kwargs)
    return ReadoutScorer(loaded, layer, head, meta)


def get_scorer(loaded: LoadedModel, source: str = "auto", layer: int | None = None, seed: int = 0,
               cache_dir=None) -> Scorer:
    """Choose how cloze questions are answered.

    ``source``: ``"auto"`` (the model's MLM head if present, else a fitted readout on ``layer``, default
    the last layer), ``"mlm"`` (raises :class:`MissingHeadError` if the model has none),
    ``"readout"``, ``"control"`` (random-init MLM, ``seed``).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if source == "auto":
        source = "mlm" if loaded.info.has_mlm_head else "readout"
    if source == "mlm":
        return mlm_scorer(loaded)
    if source == "control":
        return control_scorer(loaded, seed)
    return readout_scorer(loaded, layer, cache_dir=cache_dir)
