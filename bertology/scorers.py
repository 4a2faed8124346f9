"""The scorers room of the engine: what answers a ``[MASK]``, and the three questions asked of it.

:class:`Scorer` gives log-probabilities over the vocabulary at masked positions; its sources are
``"mlm"`` (the model's own head), ``"control"`` (a random-init masked LM with the same config and
tokenizer) and ``"readout"`` (a head fitted on frozen states, :class:`bertology.readout.ReadoutScorer`).
Every scorer answers :meth:`Scorer.cloze` (score given fillers of one ``[MASK]``),
:meth:`Scorer.topk` (the best fillers) and :meth:`Scorer.pll` (pseudo-log-likelihood of a sentence),
like minicons' scorers; the same functions are :func:`cloze`, :func:`topk` and :func:`pll` here and
in :mod:`bertology.cloze` (which also chooses a scorer: ``cloze.get_scorer``). The method notes
(multi-piece targets, PLL, ranks) are in :mod:`bertology.cloze`'s docstring.

Masked sequences are length-bucketed and padded by :func:`bertology.extract.padded_batches` and
run by :func:`bertology.extract.forward`; only the rows at masked positions go through the (large)
vocabulary projection.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .extract import batch_overhead, logits_at, padded_batches
from .models import LoadedModel, MissingHeadError, random_from_config

log = logging.getLogger(__name__)

#: Placeholder in context strings; replaced by ``tokenizer.mask_token``.
MASK = "[MASK]"
MULTI_PIECE = ("sequential", "skip")

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

    def cloze(self, contexts: Sequence[str], targets: Sequence[Sequence[str]] | None = None, **kwargs) -> "ClozeResult":
        """Score ``targets`` in the one ``[MASK]`` of each context and list the top tokens (:func:`cloze`)."""
        return cloze(self, contexts, targets, **kwargs)

    def topk(self, contexts: Sequence[str], k: int = 10, **kwargs) -> pd.DataFrame:
        """The ``k`` best fillers of each context's ``[MASK]``: [item, rank, token, logprob] (:func:`topk`)."""
        return topk(self, contexts, k, **kwargs)

    def pll(self, sentences: Sequence[str], **kwargs) -> pd.DataFrame:
        """Pseudo-log-likelihood of each sentence: [item, pll, n_pieces] (:func:`pll`)."""
        return pll(self, sentences, **kwargs)


class MLMScorer(Scorer):
    """A masked-LM model (its own head, or a random-init control): logits at the masked rows only."""

    def __init__(self, loaded: LoadedModel, source: str, label: str):
        super().__init__(loaded, source, label)

    def _states(self, input_ids, attention_mask, positions):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return logits_at(self.loaded, batch, positions[:, 0], positions[:, 1])


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
                                  loaded.device, precision=loaded.info.precision)
    # keep the real model's length limit (the tokenizer's may be tighter than the config's)
    info = control.info.__class__(**{**control.info.to_dict(), "max_length": loaded.info.max_length})
    return MLMScorer(LoadedModel(control.tokenizer, control.model, info), "control",
                     f"random-init control (seed {seed})")


# --------------------------------------------------------------------------- batching


@dataclass
class _Requests:
    """Sequences to run, one masked position each, plus what to read off at that position."""

    seqs: list[list[int]] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    target: list[int] = field(default_factory=list)  # -1: none

    def add(self, seq, pos, target=-1) -> int:
        self.seqs.append(list(seq))
        self.pos.append(int(pos))
        self.target.append(int(target))
        return len(self.seqs) - 1


def _run(scorer: Scorer, req: _Requests, batch_size: int, *, k: int = 0, allowed: torch.Tensor | None = None,
         progress: bool = True, desc: str = "cloze"):
    """Target log-prob, target rank among ``allowed`` ids and top-``k`` allowed ids for every request.

    Rank = 1 + number of allowed ids scored strictly higher than the target (ties favour the target).
    Requests with the same sequence and position (one context with several single-piece targets,
    e.g. Goldberg's correct and wrong verb form, or its top-k request) share one forward pass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(req.seqs)
    lp = np.full(n, np.nan)
    rank = np.full(n, np.nan)
    top_ids = np.zeros((n, k), dtype=np.int64)
    top_lp = np.zeros((n, k))
    if n == 0:
        return lp, rank, top_ids, top_lp
    allowed_dev = None if allowed is None else allowed.to(scorer.device)
    for idx, out in masked_log_probs(scorer, req.seqs, req.pos, batch_size, progress=progress, desc=desc):
        tgt = torch.as_tensor([req.target[i] for i in idx], device=out.device)
        has = tgt >= 0
        t_lp = out.gather(1, tgt.clamp(min=0)[:, None])[:, 0]
        sub = out if allowed_dev is None else out[:, allowed_dev]
        t_rank = 1 + (sub > t_lp[:, None]).sum(1)
        keep = has.cpu().numpy()
        lp[idx[keep]] = t_lp[has].double().cpu().numpy()
        rank[idx[keep]] = t_rank[has].double().cpu().numpy()
        if k:
            kk = min(k, sub.shape[1])
            v, j = sub.topk(kk, dim=1)
            j = j if allowed_dev is None else allowed_dev[j]
            top_ids[idx, :kk] = j.cpu().numpy()
            top_lp[idx, :kk] = v.double().cpu().numpy()
            if kk < k:
                top_lp[idx, kk:] = np.nan
    return lp, rank, top_ids, top_lp


def masked_log_probs(scorer: Scorer, seqs: Sequence[Sequence[int]], positions: Sequence[int], batch_size: int = 32,
                     *, progress: bool = False, desc: str = "cloze") -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Log-probabilities over the vocabulary at one position of each token-id sequence, as
    ``(indices, log_probs)`` per batch: ``log_probs[r]`` (on the scorer's device) belongs to
    ``seqs[indices[r]]`` at ``positions[indices[r]]``. Sequences are length-bucketed and padded by
    :func:`bertology.extract.padded_batches`; identical (sequence, position) pairs run once and
    their rows are repeated. Every batch's indices are new; together they cover every sequence."""
    if len(seqs) != len(positions):
        raise ValueError(f"{len(seqs)} sequences but {len(positions)} positions")
    if not len(seqs):
        return
    first, members = _distinct(seqs, positions)
    distinct = [seqs[r] for r in first]
    for batch, ids, mask in padded_batches(distinct, batch_size, 16384, progress=progress, desc=desc,
                                             overhead=batch_overhead(scorer.device)):
        where = torch.stack([torch.arange(len(batch)), torch.as_tensor([int(positions[first[u]]) for u in batch])], 1)
        out = scorer.log_probs(ids, mask, where)  # [B, V], one row per distinct sequence
        idx = np.concatenate([members[u] for u in batch])
        if len(idx) > len(batch):  # some sequences stand for several requests: one row per request
            rows = np.repeat(np.arange(len(batch)), [len(members[u]) for u in batch])
            out = out[torch.as_tensor(rows, device=out.device)]
        yield idx, out


def _distinct(seqs: Sequence[Sequence[int]], positions: Sequence[int]) -> tuple[list[int], list[np.ndarray]]:
    """The distinct (sequence, position) pairs: the index of the first of each, in order, and the
    indices of all that share it."""
    where: dict[tuple, int] = {}
    first: list[int] = []
    members: list[list[int]] = []
    for r, (seq, pos) in enumerate(zip(seqs, positions)):
        u = where.setdefault((int(pos), *seq), len(first))
        if u == len(first):
            first.append(r)
            members.append([])
        members[u].append(r)
    return first, [np.asarray(m, dtype=np.int64) for m in members]


# --------------------------------------------------------------------------- tokenizing


def _span_pieces(tokenizer, text: str, start: int, end: int) -> tuple[list[int], list[int]]:
    """Tokenize ``text`` (with special tokens); return its ids and the indices of the pieces whose
    characters lie in ``[start, end)``."""
    enc = tokenizer(text, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    inside = [t for t, (a, b) in enumerate(enc["offset_mapping"])
              if b > a and a >= start and b <= end and enc["input_ids"][t] not in special]
    # byte-level BPE offsets may start at the space before a word; take pieces overlapping the span
    if not inside:
        inside = [t for t, (a, b) in enumerate(enc["offset_mapping"])
                  if b > a and a < end and b > start and enc["input_ids"][t] not in special]
    return list(enc["input_ids"]), inside


def word_pieces(tokenizer, word: str) -> list[int]:
    """Word-piece ids of ``word`` as it reads after a space in running text."""
    if not word or not word.strip():
        raise ValueError("an empty string has no word pieces")
    text = "the " + word
    ids, inside = _span_pieces(tokenizer, text, 4, len(text))
    return [ids[t] for t in inside]


def encode_masked(scorer: Scorer, text: str, what: str) -> tuple[list[int], int]:
    """Token ids of ``text`` (one ``[MASK]``, replaced by the tokenizer's mask token) and the mask's
    position. ``what`` names the input in errors ("context 3", "fact 2, query 'negated'")."""
    if not isinstance(text, str) or text.count(MASK) != 1:
        raise ValueError(f"{what} must be a string with exactly one {MASK}: {text!r}")
    tok = scorer.tokenizer
    ids = tok(text.replace(MASK, tok.mask_token))["input_ids"]
    where = [t for t, x in enumerate(ids) if x == scorer.mask_id]
    if len(where) != 1:
        raise ValueError(f"{what}: expected one mask token after tokenizing, found {len(where)}")
    if len(ids) > scorer.max_length:
        raise ValueError(f"{what} is {len(ids)} word pieces long, over the model's limit of {scorer.max_length}")
    return ids, where[0]


def _check_context(i: int, context) -> int:
    if not isinstance(context, str):
        raise TypeError(f"context {i} must be a string, got {type(context).__name__}")
    n = context.count(MASK)
    if n != 1:
        raise ValueError(f"context {i} must contain exactly one {MASK}, found {n}: {context!r}")
    return context.index(MASK)


def _vocab_ids(tokenizer, vocab: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    """Allowed ids for ranks/top-k: single-piece ``vocab`` words (others are dropped and returned),
    or every non-special token of the tokenizer."""
    if vocab is None:
        special = set(tokenizer.all_special_ids)
        return torch.as_tensor([i for i in range(len(tokenizer)) if i not in special]), []
    if isinstance(vocab, str):
        raise TypeError("vocab must be a sequence of words, not one string")
    ids, dropped, seen = [], [], set()
    for w in vocab:
        p = word_pieces(tokenizer, w)
        if len(p) == 1:
            if p[0] not in seen:
                seen.add(p[0])
                ids.append(p[0])
        else:
            dropped.append(w)
    if dropped:
        log.warning("%d of %d vocab words are not single word pieces and are left out (e.g. %s)",
                    len(dropped), len(vocab), ", ".join(map(repr, dropped[:5])))
    if not ids:
        raise ValueError("no word of `vocab` is a single word piece of this tokenizer")
    return torch.as_tensor(ids), dropped


# --------------------------------------------------------------------------- cloze


@dataclass
class ClozeResult:
    """``targets``: [item, target, n_pieces, logprob, prob, rank]; ``top``: [item, rank, token, logprob].

    ``rank`` is among the allowed vocabulary (``vocab`` when given, else all non-special tokens),
    1 = best, NaN for multi-piece targets. ``n_skipped``: multi-piece targets left unscored
    (``multi_piece="skip"``). ``vocab_dropped``: ``vocab`` words that are not single pieces.
    """

    targets: pd.DataFrame
    top: pd.DataFrame
    n_skipped: int = 0
    vocab_dropped: list = field(default_factory=list)
    source: str = ""
    label: str = ""


def cloze(scorer: Scorer, contexts: Sequence[str], targets: Sequence[Sequence[str]] | None = None, *, k: int = 10,
          vocab: Sequence[str] | None = None, multi_piece: str = "sequential", batch_size: int = 32,
          progress: bool = True) -> ClozeResult:
    """Fill the one ``[MASK]`` of each context; score given ``targets`` and list the top ``k`` tokens.

    ``targets[i]`` is a list of candidate words for context ``i`` (a bare string counts as a list of
    one). ``vocab`` restricts top-k and ranks to those single-piece words (Petroni et al. 2019 use a
    common vocabulary in the same way). See the module docstring for ``multi_piece``.
    """
    if multi_piece not in MULTI_PIECE:
        raise ValueError(f"multi_piece must be one of {MULTI_PIECE}, not {multi_piece!r}")
    if isinstance(contexts, str):
        raise TypeError("contexts must be a sequence of strings, not one string")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    contexts = list(contexts)
    starts = [_check_context(i, c) for i, c in enumerate(contexts)]
    if targets is not None:
        if isinstance(targets, str) or len(targets) != len(contexts):
            raise ValueError(f"targets must be a list with one list of words per context "
                             f"({len(contexts)} contexts, got {1 if isinstance(targets, str) else len(targets)})")
        targets = [[t] if isinstance(t, str) else list(t) for t in targets]
    tok = scorer.tokenizer
    allowed, dropped = _vocab_ids(tok, vocab)

    req = _Requests()
    top_req = []  # request index per context (top-k)
    if k:
        for i, (c, s) in enumerate(zip(contexts, starts)):
            text = c[:s] + tok.mask_token + c[s + len(MASK):]
            ids = tok(text)["input_ids"]
            where = [t for t, x in enumerate(ids) if x == scorer.mask_id]
            if len(where) != 1:
                raise ValueError(f"context {i}: expected one mask token after tokenizing, found {len(where)}")
            _check_length(scorer, i, ids)
            top_req.append(req.add(ids, where[0]))

    rows, steps = [], []  # steps: per target row, list of request indices (sequential pieces)
    n_skipped = 0
    for i, (c, s) in enumerate(zip(contexts, starts)):
        for t in (targets[i] if targets is not None else []):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"item {i}: targets must be non-empty strings, got {t!r}")
            text = c[:s] + t + c[s + len(MASK):]
            ids, inside = _span_pieces(tok, text, s, s + len(t))
            if not inside:
                raise ValueError(f"item {i}: target {t!r} has no word pieces in context")
            _check_length(scorer, i, ids)
            pieces = [ids[j] for j in inside]
            rows.append({"item": i, "target": t, "n_pieces": len(pieces)})
            if len(pieces) > 1 and multi_piece == "skip":
                n_skipped += 1
                steps.append([])
                continue
            a, b = inside[0], inside[-1] + 1
            if b - a != len(pieces):
                raise ValueError(f"item {i}: target {t!r} is not a contiguous run of word pieces")
            own = []
            for j in range(len(pieces)):  # left-to-right: pieces before j filled, j.. masked
                seq = ids[:a] + pieces[:j] + [scorer.mask_id] * (len(pieces) - j) + ids[b:]
                own.append(req.add(seq, a + j, pieces[j]))
            steps.append(own)

    lp, rank, top_ids, top_lp = _run(scorer, req, batch_size, k=k, allowed=allowed, progress=progress)

    for row, own in zip(rows, steps):
        if not own:
            row.update(logprob=np.nan, prob=np.nan, rank=np.nan)
            continue
        total = float(lp[own].sum())
        row.update(logprob=total, prob=math.exp(total), rank=float(rank[own[0]]) if len(own) == 1 else np.nan)
    tdf = pd.DataFrame(rows, columns=["item", "target", "n_pieces", "logprob", "prob", "rank"])
    tdf = tdf.astype({"item": int, "n_pieces": int, "logprob": float, "prob": float, "rank": float})
    top_rows = []
    for i, r in enumerate(top_req):
        toks = tok.convert_ids_to_tokens(top_ids[r].tolist())
        for j in range(k):
            if not np.isnan(top_lp[r, j]):
                top_rows.append({"item": i, "rank": j + 1, "token": toks[j], "logprob": float(top_lp[r, j])})
    top = pd.DataFrame(top_rows, columns=["item", "rank", "token", "logprob"])
    if n_skipped:
        log.info("cloze: %d multi-piece targets skipped", n_skipped)
    return ClozeResult(tdf, top, n_skipped, dropped, scorer.source, scorer.label)


def _check_length(scorer: Scorer, i: int, ids: Sequence[int]) -> None:
    if len(ids) > scorer.max_length:
        raise ValueError(f"item {i} is {len(ids)} word pieces long, over the model's limit of {scorer.max_length}")


# --------------------------------------------------------------------------- PLL


def pll(scorer: Scorer, sentences: Sequence[str], batch_size: int = 64, progress: bool = True) -> pd.DataFrame:
    """Pseudo-log-likelihood of each sentence (Salazar et al. 2020, §2.1): every word piece masked in
    turn and scored given all the others; special tokens are not scored.

    Returns [item, pll, n_pieces]. Masked copies of all sentences are batched together by length.
    """
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of strings, not one string")
    tok = scorer.tokenizer
    req = _Requests()
    owner, n_pieces = [], []
    for i, s in enumerate(sentences):
        if not isinstance(s, str) or not s.strip():
            raise ValueError(f"sentence {i} must be a non-empty string, got {s!r}")
        enc = tok(s, return_special_tokens_mask=True)
        ids, special = list(enc["input_ids"]), enc["special_tokens_mask"]
        _check_length(scorer, i, ids)
        scored = [t for t, sp in enumerate(special) if not sp]
        n_pieces.append(len(scored))
        for t in scored:
            seq = ids.copy()
            seq[t] = scorer.mask_id
            req.add(seq, t, ids[t])
            owner.append(i)
    lp, _, _, _ = _run(scorer, req, batch_size, progress=progress, desc="PLL")
    totals = np.bincount(np.asarray(owner, dtype=np.int64), weights=lp, minlength=len(n_pieces)) if owner else \
        np.zeros(len(n_pieces))
    return pd.DataFrame({"item": np.arange(len(n_pieces)), "pll": totals, "n_pieces": np.asarray(n_pieces, dtype=int)})


def topk(scorer: Scorer, contexts: Sequence[str], k: int = 10, *, vocab: Sequence[str] | None = None,
         batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """The top ``k`` fillers of each context's one ``[MASK]`` (among ``vocab``'s single-piece words,
    else all non-special tokens): [item, rank, token, logprob], rank 1 = best."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return cloze(scorer, contexts, None, k=k, vocab=vocab, batch_size=batch_size, progress=progress).top
