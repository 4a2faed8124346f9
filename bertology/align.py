"""Words <-> word pieces, and word-level attention and states (Clark et al. 2019, §4.1).

An input (one sentence, or a pair ``[CLS] A [SEP] B [SEP]``) is cut into *units*: each gold word
is one unit made of its word pieces, and each special token ([CLS], [SEP]) is a unit of its own,
so analyses can still ask how much a word attends to [SEP].

Word-level attention follows Clark et al. §4.1: attention *to* a split word is the **sum** of
the attention to its pieces, attention *from* a split word is the **mean** over its pieces, so
every row still sums to 1. In matrix form, with ``P`` the pieces->units one-hot matrix
(T x U) and ``M = diag(1/len) P^T`` the averaging matrix (U x T): ``W = M A P``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

CLS, SEP, WORD = "cls", "sep", "word"


class AlignmentError(ValueError):
    """Words could not be aligned to the tokenizer's pieces."""


@dataclass
class Encoding:
    """One model input and its map from pieces to units (unpadded)."""

    input_ids: np.ndarray  # (T,)
    token_type_ids: np.ndarray  # (T,)
    tokens: list[str]
    unit_of_token: np.ndarray  # (T,) unit index of each piece
    unit_kind: list[str]  # (U,) "cls" | "sep" | "word"
    unit_word: np.ndarray  # (U,) index into the input's words (A then B), -1 for special units
    unit_segment: np.ndarray  # (U,) 0 for [CLS]+A+first [SEP], 1 for B+last [SEP]
    n_words: int  # words asked for
    n_words_kept: int  # words that fit into the model's maximum length
    words: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_units(self) -> int:
        return len(self.unit_kind)

    @property
    def truncated(self) -> bool:
        return self.n_words_kept < self.n_words

    @property
    def word_units(self) -> np.ndarray:
        """Unit index of each kept word, in word order."""
        return np.flatnonzero(self.unit_word >= 0)

    def unit_labels(self) -> list[str]:
        labels = []
        for kind, w in zip(self.unit_kind, self.unit_word):
            labels.append("[CLS]" if kind == CLS else "[SEP]" if kind == SEP else self.words[w])
        return labels

    def pieces_per_unit(self) -> np.ndarray:
        return np.bincount(self.unit_of_token, minlength=self.n_units)


def encode_words(
    tokenizer,
    words_a: list[str],
    words_b: list[str] | None = None,
    max_length: int | None = None,
) -> Encoding:
    """Tokenize gold words (one sentence or a pair) and map every piece to its unit.

    Words the tokenizer turns into no piece at all (e.g. lone control or zero-width characters)
    are replaced by the unknown token so that every gold word keeps a unit. Inputs longer than
    ``max_length`` pieces lose whole words from the end (of the longer segment, for pairs);
    ``n_words_kept`` says how many words remain. Many inputs at once: :func:`encode_many`.
    """
    _check_input(tokenizer, words_a, words_b)
    max_length = max_length or getattr(tokenizer, "model_max_length", 512)
    words_a, words_b = fill_empty_words(tokenizer, words_a), fill_empty_words(tokenizer, words_b)
    return _encode_filled(tokenizer, words_a, words_b, max_length)


def encode_many(tokenizer, inputs: list[tuple[list[str], list[str] | None]], max_length: int | None = None,
                chunk: int = 1024) -> list[Encoding]:
    """:func:`encode_words` of every ``(words_a, words_b or None)`` in ``inputs``, with the same
    result, in a few calls to the tokenizer instead of several per input: one batched call finds
    the words without pieces (over the distinct words), one per ``chunk`` inputs tokenizes them.
    An input longer than ``max_length`` goes through :func:`encode_words`'s word dropping.
    (Notebook 06 embeds 87,518 number lists: one tokenizer call per word and input took 32 s.)
    An error names the input: ``input 3: ...``."""
    inputs = list(inputs)
    for i, (a, b) in enumerate(inputs):
        try:
            _check_input(tokenizer, a, b)
        except AlignmentError as exc:
            raise AlignmentError(f"input {i}: {exc}") from exc
    max_length = max_length or getattr(tokenizer, "model_max_length", 512)
    empty = empty_words(tokenizer, [w for a, b in inputs for w in (*a, *(b or ()))])
    filled = [(fill_empty_words(tokenizer, a, empty), fill_empty_words(tokenizer, b, empty)) for a, b in inputs]
    out: list[Encoding | None] = [None] * len(filled)
    for pair in (False, True):
        todo = [i for i, (_, b) in enumerate(filled) if (b is not None) == pair]
        for start in range(0, len(todo), chunk):
            idx = todo[start:start + chunk]
            enc = tokenizer([filled[i][0] for i in idx], [filled[i][1] for i in idx] if pair else None,
                            is_split_into_words=True, add_special_tokens=True, truncation=False)
            for j, i in enumerate(idx):
                a, b = filled[i]
                try:
                    if len(enc["input_ids"][j]) > max_length:
                        out[i] = _encode_filled(tokenizer, a, b, max_length)
                    else:
                        tt = enc["token_type_ids"][j] if "token_type_ids" in enc else None
                        out[i] = _encoding(tokenizer, enc["input_ids"][j], tt, enc.word_ids(j), enc.sequence_ids(j),
                                           a, b, len(a), len(b) if b is not None else 0)
                except AlignmentError as exc:
                    raise AlignmentError(f"input {i}: {exc}") from exc
    return out


def _check_input(tokenizer, words_a, words_b) -> None:
    if not words_a or (words_b is not None and not words_b):
        raise AlignmentError("cannot encode an empty sentence (no words)")
    if not getattr(tokenizer, "is_fast", False):
        raise AlignmentError("word alignment needs a fast tokenizer (one with word_ids())")


def _encode_filled(tokenizer, words_a: list[str], words_b: list[str] | None, max_length: int) -> Encoding:
    keep_a, keep_b = len(words_a), len(words_b) if words_b is not None else 0
    while True:
        enc = tokenizer(
            words_a[:keep_a], words_b[:keep_b] if words_b is not None else None,
            is_split_into_words=True, add_special_tokens=True, truncation=False,
        )
        if len(enc["input_ids"]) <= max_length:
            break
        if keep_a + keep_b <= 2:
            raise AlignmentError(f"even two words exceed the maximum length of {max_length} pieces")
        # drop whole words until it fits; pairs drop from the longer segment (like longest_first)
        excess = len(enc["input_ids"]) - max_length
        step = max(1, excess // 4)
        if keep_b > keep_a:
            keep_b = max(1, keep_b - step)
        else:
            keep_a = max(1, keep_a - step)
    return _encoding(tokenizer, enc["input_ids"], enc.get("token_type_ids"), enc.word_ids(), enc.sequence_ids(),
                     words_a, words_b, keep_a, keep_b)


def _encoding(tokenizer, input_ids, token_type_ids, word_ids, seq_ids, words_a, words_b, keep_a: int,
              keep_b: int) -> Encoding:
    """The :class:`Encoding` of one tokenized input whose first ``keep_a`` (and ``keep_b``) words were kept."""
    ids = np.asarray(input_ids, dtype=np.int64)
    tt = np.asarray(token_type_ids if token_type_ids is not None else [0] * len(ids), dtype=np.int64)
    n_words = len(words_a) + (len(words_b) if words_b is not None else 0)
    kept_words = list(words_a[:keep_a]) + (list(words_b[:keep_b]) if words_b is not None else [])
    unit_of_token = np.empty(len(ids), dtype=np.int64)
    unit_kind: list[str] = []
    unit_word: list[int] = []
    unit_seg: list[int] = []
    prev_word = None
    seen_sep = 0
    for t, (w, s) in enumerate(zip(word_ids, seq_ids)):
        if w is None:  # special token: its own unit
            kind = CLS if t == 0 else SEP
            unit_kind.append(kind)
            unit_word.append(-1)
            unit_seg.append(min(seen_sep, 1))
            seen_sep += kind == SEP
            prev_word = None
        else:
            gw = w + (keep_a if s == 1 else 0)
            if gw != prev_word:
                unit_kind.append(WORD)
                unit_word.append(gw)
                unit_seg.append(int(s or 0))
                prev_word = gw
        unit_of_token[t] = len(unit_kind) - 1
    unit_word_arr = np.asarray(unit_word, dtype=np.int64)
    found = sorted(set(unit_word_arr[unit_word_arr >= 0].tolist()))
    if found != list(range(len(kept_words))):
        raise AlignmentError(f"pieces do not cover the words contiguously: {kept_words[:8]}...")
    return Encoding(
        input_ids=ids,
        token_type_ids=tt,
        tokens=tokenizer.convert_ids_to_tokens(ids.tolist()),
        unit_of_token=unit_of_token,
        unit_kind=unit_kind,
        unit_word=unit_word_arr,
        unit_segment=np.asarray(unit_seg, dtype=np.int64),
        n_words=n_words,
        n_words_kept=len(kept_words),
        words=kept_words,
    )


def empty_words(tokenizer, words, chunk: int = 4096) -> set[str]:
    """The distinct words of ``words`` that ``tokenizer`` turns into no piece at all (empty or blank
    strings, lone control or zero-width characters), found by batched calls over distinct words."""
    distinct = set(words)
    out = {w for w in distinct if not w or not w.strip()}
    rest = sorted(distinct - out)
    for start in range(0, len(rest), chunk):
        part = rest[start:start + chunk]
        ids = tokenizer(part, add_special_tokens=False, truncation=False)["input_ids"]
        out.update(w for w, i in zip(part, ids) if not len(i))
    return out


def fill_empty_words(tokenizer, words: list[str] | None, empty: set[str] | None = None) -> list[str] | None:
    """``words`` with every word that has no piece (:func:`empty_words`, or the given set) replaced
    by the unknown token, so that each keeps a unit; None stays None."""
    if words is None:
        return None
    empty = empty_words(tokenizer, words) if empty is None else empty
    return [tokenizer.unk_token if w in empty else w for w in words]


def token_level(enc: Encoding) -> Encoding:
    """The same input with every piece as its own unit (for token-level analyses)."""
    n = enc.n_tokens
    word_of_token = enc.unit_word[enc.unit_of_token]
    kind = [enc.unit_kind[u] for u in enc.unit_of_token]
    return Encoding(
        input_ids=enc.input_ids,
        token_type_ids=enc.token_type_ids,
        tokens=enc.tokens,
        unit_of_token=np.arange(n),
        unit_kind=kind,
        unit_word=word_of_token,
        unit_segment=enc.unit_segment[enc.unit_of_token],
        n_words=enc.n_words,
        n_words_kept=enc.n_words_kept,
        words=enc.words,
    )


def warn_truncated(encodings: list[Encoding], what: str = "inputs") -> int:
    """Emit one warning counting truncated inputs; return the count."""
    n = sum(e.truncated for e in encodings)
    if n:
        dropped = sum(e.n_words - e.n_words_kept for e in encodings)
        warnings.warn(
            f"{n} of {len(encodings)} {what} exceeded the model's maximum length and were truncated "
            f"({dropped} words dropped from their ends)",
            stacklevel=2,
        )
    return n


# ----------------------------------------------------------------------------- batched maps


def pooling_matrices(encodings: list[Encoding], n_tokens: int, device=None, dtype=torch.float32):
    """Padded ``to`` (B x T x U) sum matrices and ``from`` (B x U x T) mean matrices.

    Padding pieces and padding units get zero rows/columns.
    """
    n_units = max(e.n_units for e in encodings)
    to = torch.zeros(len(encodings), n_tokens, n_units, dtype=dtype)
    for b, e in enumerate(encodings):
        to[b, torch.arange(e.n_tokens), torch.as_tensor(e.unit_of_token)] = 1.0
    counts = to.sum(1, keepdim=True).clamp_min(1.0)  # pieces per unit
    frm = (to / counts).transpose(1, 2).contiguous()
    return to.to(device), frm.to(device)


def word_level_attention(attn: torch.Tensor, to: torch.Tensor, frm: torch.Tensor) -> torch.Tensor:
    """``attn`` (B x L x H x T x T) -> units (B x L x H x U x U): mean over *from* pieces, sum over *to*."""
    return torch.einsum("but,blhts,bsv->blhuv", frm, attn, to)


def word_level_states(states: torch.Tensor, to: torch.Tensor, frm: torch.Tensor, encodings, pool: str = "mean"):
    """``states`` (B x L x T x D) -> units (B x L x U x D) by ``mean``, ``first`` or ``last`` piece."""
    if pool == "mean":
        return torch.einsum("but,bltd->blud", frm, states)
    if pool not in ("first", "last"):
        raise ValueError(f"pool must be 'mean', 'first' or 'last', not {pool!r}")
    index = torch.zeros(frm.shape[0], frm.shape[1], dtype=torch.long)
    for b, e in enumerate(encodings):
        order = np.arange(e.n_tokens) if pool == "first" else np.arange(e.n_tokens)[::-1]
        pick = np.full(e.n_units, -1)
        for t in order:
            if pick[e.unit_of_token[t]] < 0:
                pick[e.unit_of_token[t]] = t
        index[b, : e.n_units] = torch.as_tensor(pick)
    index = index.to(states.device)
    gather = index[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[-1])
    return torch.gather(states, 2, gather)


# ----------------------------------------------------------------------------- vocabulary coverage

#: Share of words with an unknown piece above which a report says the vocabulary does not fit the language.
UNK_NOTE_THRESHOLD = 0.05


def unknown_rate(tokenizer, sentences: list[list[str]]) -> dict:
    """How many gold words (and pieces) the tokenizer maps to its unknown token.

    Words are tokenized as :func:`encode_words` does (``is_split_into_words``, no special tokens);
    a word counts as unknown when any of its pieces is the unknown token. A tokenizer without an
    unknown token (byte-level BPE) never produces one. Returns ``words, unknown_words, word_rate,
    pieces, unknown_pieces, piece_rate``.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = backend.normalizer if backend is not None else None
    words = unknown_words = pieces = unknown_pieces = rewritten = 0
    example = None
    for start in range(0, len(sentences), 256):
        batch = [list(s) for s in sentences[start:start + 256] if len(s)]
        if not batch:
            continue
        enc = tokenizer(batch, is_split_into_words=True, add_special_tokens=False, truncation=False)
        for b, ids in enumerate(enc["input_ids"]):
            word_ids = enc.word_ids(b)
            bad = {w for w, i in zip(word_ids, ids) if w is not None and unk is not None and i == unk}
            words += len(batch[b])
            if normalizer is not None:
                for w in batch[b]:
                    norm = normalizer.normalize_str(w)
                    if norm not in (w, w.lower()):  # more than lowercasing, e.g. NFD splitting Hangul into jamo
                        rewritten += 1
                        example = example or (w, norm)
            unknown_words += len(bad)
            pieces += len(ids)
            unknown_pieces += sum(unk is not None and i == unk for i in ids)
    return {"words": words, "unknown_words": unknown_words, "word_rate": unknown_words / words if words else 0.0,
            "pieces": pieces, "unknown_pieces": unknown_pieces,
            "piece_rate": unknown_pieces / pieces if pieces else 0.0,
            "rewritten_words": rewritten, "rewritten_rate": rewritten / words if words else 0.0,
            "rewritten_example": list(example) if example else None}


def vocabulary_note(rate: dict, model: str, language: str | None = None,
                    threshold: float = UNK_NOTE_THRESHOLD) -> str | None:
    """A report note when more than ``threshold`` of the words hold an unknown piece, or more than
    half of them are rewritten by the tokenizer's normalizer beyond lowercasing, else None."""
    lang = f" {language}" if language else ""
    parts = []
    if rate["word_rate"] > threshold:
        parts.append(f"{rate['word_rate']:.1%} of the{lang} words ({rate['unknown_words']} of {rate['words']}) contain "
                     f"the unknown token of {model}'s tokenizer: its vocabulary does not match this language, so "
                     "attention to and from those words says little.")
    if rate.get("rewritten_rate", 0.0) > 0.5:
        w, norm = rate["rewritten_example"]
        parts.append(f"The tokenizer's normalizer rewrites {rate['rewritten_rate']:.0%} of the words beyond lowercasing "
                     f"(e.g. {w} -> {norm} with {len(norm)} characters: uncased BERT tokenizers strip accents after "
                     "Unicode NFD, which also splits Hangul syllables into jamo).")
    return " ".join(parts + ["Use a model trained on the language."]) if parts else None
