"""Cloze scorers: what answers a ``[MASK]`` (one room of the engine).

:class:`Scorer` gives log-probabilities over the vocabulary at masked positions; its sources are
``"mlm"`` (the model's own head), ``"control"`` (a random-init masked LM with the same config and
tokenizer) and ``"readout"`` (a head fitted on frozen states, :class:`bertology.readout.ReadoutScorer`).
The cloze, top-k and PLL methods that use them live in :mod:`bertology.cloze`.
"""
from __future__ import annotations

import torch

from .models import LoadedModel, MissingHeadError, random_from_config

# module names under which masked-LM classes keep their prediction head (BERT, RoBERTa, ALBERT)
HEAD_ATTRS = ("cls", "lm_head", "predictions")


class Scorer:
    """Gives log-probabilities over the vocabulary at masked positions.

    ``source``: ``"mlm"`` | ``"readout"`` | ``"control"``; ``label``: human-readable, printed with
    every number. Subclasses implement :meth:`_states` (hidden states fed to the head) and
    :meth:`_project` (states -> vocabulary logits).
    """

    source: str = ""
    label: str = ""

    def __init__(self, loaded: LoadedModel, source: str, label: str):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.source = source
        self.label = label
        self.max_length = loaded.info.max_length
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"the tokenizer of {loaded.info.name!r} has no mask token; cloze scoring needs one")
        self.mask_id = int(self.tokenizer.mask_token_id)

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def info(self):
        return self.loaded.info

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, label={self.label!r})"

    def log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` LongTensor [N, 2] of (row, column) -> [N, V] log-softmax over the vocabulary."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise ValueError(f"positions must have shape [N, 2] (row, column), got {tuple(positions.shape)}")
        dev = self.device
        with torch.inference_mode():
            states = self._states(input_ids.to(dev), attention_mask.to(dev), positions.to(dev))
            return torch.log_softmax(states.float(), dim=-1)

    def _states(self, input_ids, attention_mask, positions) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class MLMScorer(Scorer):
    """A masked-LM model (its own head, or a random-init control): logits at the masked rows only."""

    def __init__(self, loaded: LoadedModel, source: str, label: str):
        super().__init__(loaded, source, label)
        model = loaded.model
        self._head = next((getattr(model, a) for a in HEAD_ATTRS if isinstance(getattr(model, a, None), torch.nn.Module)), None)
        self._base = model.base_model if self._head is not None else None

    def _states(self, input_ids, attention_mask, positions):
        rows, cols = positions[:, 0], positions[:, 1]
        if self._head is None:  # unknown head layout: full logits, then gather
            return self.loaded.model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]
        hidden = self._base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._head(hidden[rows, cols])


def mlm_scorer(loaded: LoadedModel) -> Scorer:
    """The model's own masked-LM head; :class:`MissingHeadError` naming the model if it has none."""
    if not loaded.info.has_mlm_head:
        raise MissingHeadError(
            f"{loaded.info.name!r} has no masked-LM head, so its own cloze predictions cannot be scored. "
            "Use source='readout' (a fitted readout on one layer, labelled as such) or 'control', or a "
            "model with an MLM head such as 'bert-base-uncased'."
        )
    return MLMScorer(loaded, "mlm", f"{loaded.info.name} MLM head")


def control_scorer(loaded: LoadedModel, seed: int = 0) -> Scorer:
    """Random-init control: a BertForMaskedLM-style model with ``loaded``'s config and tokenizer and
    fresh random weights (``seed``), head included. Any "knowledge" it shows is chance or frequency."""
    config = loaded.model.config.__class__.from_dict(loaded.model.config.to_dict())
    control = random_from_config(config, loaded.tokenizer, True, seed, f"{loaded.info.name}+random-init",
                                  loaded.device)
    # keep the real model's length limit (the tokenizer's may be tighter than the config's)
    info = control.info.__class__(**{**control.info.to_dict(), "max_length": loaded.info.max_length})
    return MLMScorer(LoadedModel(control.tokenizer, control.model, info), "control",
                     f"random-init control (seed {seed})")
