"""Data: the registry of public files, the CoNLL-U reader, and treebanks ready for analysis.

``load_treebank`` is the one entry point the analyses use::

    load_treebank("sample")            # offline: hand-made sentences + grammar-generated ones
    load_treebank("ewt", split="dev")  # UD English-EWT, via BERTOLOGY_DATA, the cache or a download
    load_treebank("path/to/file.conllu")
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .conllu_io import CoNLLUError, Sentence, read_conllu, write_conllu
from .grammar import generate_treebank
from .registry import (
    DataIntegrityError, DataUnavailableError, RegistryEntry, UnknownDatasetError, cache_root, data_path,
    dataset_info, list_datasets, registry_entry,
)

__all__ = [
    "Sentence", "Treebank", "CoNLLUError", "read_conllu", "write_conllu", "generate_treebank",
    "load_treebank", "to_dataset", "sentence_pairs", "sample_path",
    "data_path", "list_datasets", "dataset_info", "registry_entry", "cache_root", "RegistryEntry",
    "UnknownDatasetError", "DataUnavailableError", "DataIntegrityError",
]

log = logging.getLogger(__name__)

_SAMPLES = Path(__file__).with_name("samples")
# name -> (registry dataset, file pattern, splits available)
_TREEBANKS = {
    "ewt": ("ud-english-ewt", "en_ewt-ud-{split}.conllu", ("train", "dev", "test")),
    "gum": ("ud-english-gum", "en_gum-ud-{split}.conllu", ("dev", "test")),
}
_SAMPLE_SIZES = {"dev": 400, "test": 400, "train": 2000}


def sample_path(name: str = "handmade.conllu") -> Path:
    """Path of a file shipped in ``bertology/data/samples``."""
    return _SAMPLES / name


class Treebank(list):
    """A list of :class:`Sentence` that remembers where it came from and what was filtered out.

    ``n_read`` counts sentences before filtering; ``n_too_long`` those dropped by ``max_words``.
    """

    def __init__(self, sentences=(), name: str = "", split: str = "", n_read: int = 0, n_too_long: int = 0):
        super().__init__(sentences)
        self.name, self.split, self.n_read, self.n_too_long = name, split, n_read, n_too_long

    def __repr__(self) -> str:
        return (f"Treebank(name={self.name!r}, split={self.split!r}, sentences={len(self)}, "
                f"n_read={self.n_read}, n_too_long={self.n_too_long})")


def load_treebank(name: str = "sample", split: str = "dev", limit: int | None = None,
                  max_words: int | None = None, seed: int = 0) -> Treebank:
    """Load a treebank as a list of sentences with gold UD trees.

    ``name``:
      - ``"sample"`` (offline): ``dev`` = the hand-made sentences followed by 400 generated with
        ``seed``; ``test`` = 400 generated with ``seed + 1``; ``train`` = 2000 generated with ``seed + 2``.
      - ``"ewt"``: UD English-EWT, splits train/dev/test (dev 2001 sentences, test 2077).
      - ``"gum"``: UD English-GUM, splits dev/test (MISC keeps its coreference ``Entity=`` annotation).
      - any other string: a path to a ``.conllu`` file (``split`` and ``seed`` are ignored).

    ``max_words`` drops sentences with more than that many (syntactic) words, e.g. to stay under a
    model's length limit; ``limit`` then keeps the first ``limit`` of the remaining sentences. How
    many were read and dropped is on the result (``n_read``, ``n_too_long``) and logged.
    """
    if name == "sample":
        if split not in _SAMPLE_SIZES:
            raise ValueError(f"sample treebank has splits {sorted(_SAMPLE_SIZES)}, not {split!r}")
        offset = {"dev": 0, "test": 1, "train": 2}[split]
        sentences = generate_treebank(_SAMPLE_SIZES[split], seed=seed + offset)
        if split == "dev":
            sentences = read_conllu(sample_path()) + sentences
    elif name in _TREEBANKS:
        dataset, pattern, splits = _TREEBANKS[name]
        if split not in splits:
            raise ValueError(f"{name} has splits {list(splits)} in the registry, not {split!r}")
        sentences = read_conllu(data_path(dataset, pattern.format(split=split)))
    else:
        path = Path(os.path.expanduser(name))
        if not path.is_file():
            raise FileNotFoundError(
                f"{name!r} is neither a known treebank ('sample', {', '.join(map(repr, _TREEBANKS))}) "
                f"nor an existing CoNLL-U file")
        sentences = read_conllu(path)
        split = ""

    n_read = len(sentences)
    if max_words is not None:
        sentences = [s for s in sentences if s.n <= max_words]
    n_too_long = n_read - len(sentences)
    if limit is not None:
        sentences = sentences[:limit]
    if n_too_long:
        log.info("%s/%s: dropped %d of %d sentences longer than %d words",
                 name, split, n_too_long, n_read, max_words)
    return Treebank(sentences, name=name, split=split, n_read=n_read, n_too_long=n_too_long)


def to_dataset(sentences: list[Sentence]):
    """A ``datasets.Dataset`` with columns words, heads, deprels, upos, sent_id, doc_id."""
    import datasets  # imported here: it is slow to import and most callers never need it

    return datasets.Dataset.from_dict({
        "words": [s.words for s in sentences],
        "heads": [s.heads for s in sentences],
        "deprels": [s.deprels for s in sentences],
        "upos": [s.upos for s in sentences],
        "sent_id": [s.sent_id for s in sentences],
        "doc_id": [s.doc_id for s in sentences],
    })


def sentence_pairs(sentences: list[Sentence], cross_document: bool = True) -> list[tuple[Sentence, Sentence]]:
    """Pair consecutive sentences for ``[CLS] A [SEP] B [SEP]`` inputs (Clark et al. 2019, §3).

    Rule: sentences are split into runs of consecutive sentences with the same ``doc_id`` (all
    ``None`` counts as one document), and each run is paired (0,1), (2,3), ... . A run's odd last
    sentence is left over; with ``cross_document=True`` the leftovers are paired with each other
    in order (so little text is lost to short documents), otherwise they are dropped. A final odd
    sentence is always dropped. Pairs come back in the order of their first sentence.
    """
    pairs: list[tuple[int, int]] = []
    leftovers: list[int] = []
    start = 0
    for i in range(1, len(sentences) + 1):
        if i == len(sentences) or sentences[i].doc_id != sentences[start].doc_id:
            run = list(range(start, i))
            pairs += [(run[k], run[k + 1]) for k in range(0, len(run) - 1, 2)]
            if len(run) % 2:
                leftovers.append(run[-1])
            start = i
    if cross_document:
        pairs += [(leftovers[k], leftovers[k + 1]) for k in range(0, len(leftovers) - 1, 2)]
    pairs.sort()
    return [(sentences[a], sentences[b]) for a, b in pairs]
