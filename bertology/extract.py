"""The one extraction engine: batched, length-bucketed forward passes streamed to reducers.

Every analysis asks :func:`extract` for word-level (or token-level) attention and hidden states
and never runs the model itself. Maps are handed to *reducers* one input at a time and then
dropped, so memory stays flat however large the corpus. An optional on-disk cache (safetensors,
no pickle) keyed by model + data + code version replays the maps without running the model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import align
from .align import Encoding
from .io import atomic_write_json
from .models import LoadedModel

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
    """Encode word lists, or ``(words_a, words_b)`` pairs, into :class:`Encoding` objects."""
    encodings = []
    for i, x in enumerate(inputs):
        try:
            if isinstance(x, tuple) and len(x) == 2 and not isinstance(x[0], str):
                encodings.append(align.encode_words(tokenizer, list(x[0]), list(x[1]), max_length))
            else:
                encodings.append(align.encode_words(tokenizer, list(x), None, max_length))
        except align.AlignmentError as exc:
            raise align.AlignmentError(f"input {i}: {exc}") from exc
    return encodings


def length_buckets(encodings: Sequence[Encoding], batch_size: int = 32, max_tokens: int = 8192) -> list[list[int]]:
    """Group inputs of similar length: sort by length, cut when ``batch_size`` or the padded
    token budget ``max_tokens`` (batch x longest) would be exceeded. Padding stays minimal."""
    return buckets_by_length([e.n_tokens for e in encodings], batch_size, max_tokens)


def buckets_by_length(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of similar length (see :func:`length_buckets`)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur, longest = [], [], 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) >= batch_size or max(longest, n) * (len(cur) + 1) > max_tokens):
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    return batches


def pad_ids(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists with 0 into ``(input_ids, attention_mask)`` LongTensors [B, max len]."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    return ids, mask


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
    encodings = (
        list(inputs)
        if inputs and isinstance(inputs[0], Encoding)
        else encode_inputs(loaded.tokenizer, inputs, loaded.info.max_length)
    )
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
    batches = length_buckets(encodings, batch_size, max_tokens)
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


def _forward(loaded, encs, indices, level, attention, hidden_states, pool) -> Iterator[Item]:
    device = loaded.device
    batch = collate(encs, device)
    with torch.inference_mode():
        out = loaded.model(**batch, output_attentions=attention, output_hidden_states=hidden_states)
        if attention and (out.attentions is None or out.attentions[0] is None):
            raise RuntimeError(
                "the model returned no attention maps; load it with attn_implementation='eager' "
                "(bertology.models.load_model does)"
            )
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
    h.update(json.dumps([CACHE_VERSION, loaded.info.name, loaded.info.revision, *options]).encode())
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

    def writer(self, dtype: str) -> "_CacheWriter":
        return _CacheWriter(self.path, dtype)


class _CacheWriter:
    """Writes an entry in a private temporary folder and renames it into place whole.

    Several processes may write the same key at once (workflow jobs of one model): each has
    its own folder, the first rename wins, a later writer finding the entry in place drops its
    copy (same key, same features), so readers see a complete entry or none, never a mix.
    """

    def __init__(self, path: Path, dtype: str):
        import tempfile

        self.final = path
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
            self.pending[f"{item.index}.hidden"] = np.ascontiguousarray(item.hidden, dtype=np.float32)
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
