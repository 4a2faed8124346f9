"""Data: the registry of public files, the CoNLL-U reader, and treebanks ready for analysis.

``load_treebank`` is the one entry point the analyses use::

    load_treebank("sample")            # offline: hand-made sentences + grammar-generated ones
    load_treebank("ewt", split="dev")  # UD English-EWT, via BERTOLOGY_DATA, the cache or a download
    load_treebank("ud:ko_gsd")         # any UD treebank with registry rows, by its file prefix
    load_treebank("path/to/file.conllu")

Adding a UD treebank takes registry rows only: one row per file of the release (dataset
``ud-<language>-<treebank>``, file ``<code>-ud-<split>.conllu``, bytes, sha256, the raw URL at a
pinned commit or release tag, license), e.g. from a mirror's ``MANIFEST.tsv`` via
``scripts/make_registry.py``. ``load_treebank("ud:<code>")`` then finds it, knows its language
from the dataset and file names, and offers the splits that have rows.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .conllu_io import CoNLLUError, Sentence, read_conllu, write_conllu
from .grammar import generate_treebank
from .registry import (
    DataIntegrityError, DataUnavailableError, RegistryEntry, UnknownDatasetError, cache_root, data_path,
    dataset_info, list_datasets, registry_entry,
)

__all__ = [
    "Sentence", "Treebank", "CoNLLUError", "read_conllu", "write_conllu", "generate_treebank",
    "load_treebank", "to_dataset", "sentence_pairs", "sample_path", "TreebankInfo", "treebank_info",
    "list_treebanks", "is_punct",
    "data_path", "list_datasets", "dataset_info", "registry_entry", "cache_root", "RegistryEntry",
    "UnknownDatasetError", "DataUnavailableError", "DataIntegrityError",
]

log = logging.getLogger(__name__)

_SAMPLES = Path(__file__).with_name("samples")
#: Short names kept for the English treebanks the notebooks always used.
_ALIASES = {"ewt": "en_ewt", "gum": "en_gum"}
_UD_FILE = re.compile(r"^([a-z]{2,3})_([a-z0-9]+)-ud-(train|dev|test)\.conllu$")
_SAMPLE_SIZES = {"dev": 400, "test": 400, "train": 2000}


@dataclass(frozen=True)
class TreebankInfo:
    """What a treebank is: its UD code (``ko_gsd``), language, title and the splits it has."""

    code: str  # UD file prefix, e.g. "ko_gsd"
    title: str  # e.g. "UD Korean GSD"
    language: str | None  # e.g. "Korean"; None when unknown (a path with an unusual name)
    language_code: str | None  # ISO 639 code from the file prefix, e.g. "ko"
    dataset: str | None = None  # registry dataset; None for the sample and for paths
    splits: tuple[str, ...] = ()

    @property
    def english(self) -> bool:
        """True for English, and for treebanks of unknown language (analyses keep their English parts)."""
        return self.language_code in ("en", None)

    def to_dict(self) -> dict:
        return {"code": self.code, "title": self.title, "language": self.language,
                "language_code": self.language_code, "dataset": self.dataset, "splits": list(self.splits)}


def _ud_catalogue() -> dict[str, TreebankInfo]:
    """Every UD treebank with registry rows: code -> info (language and name from the dataset name)."""
    found: dict[str, dict] = {}
    for dataset in list_datasets():
        for file in dataset_info(dataset)["files"]:
            m = _UD_FILE.match(file)
            if m and dataset.startswith("ud-"):
                entry = found.setdefault(f"{m[1]}_{m[2]}", {"dataset": dataset, "lang": m[1], "splits": set()})
                entry["splits"].add(m[3])
    out = {}
    for code, e in found.items():
        parts = e["dataset"].split("-")[1:]  # ud-<language...>-<treebank>
        language = " ".join(p.capitalize() for p in parts[:-1]) or None
        title = f"UD {language} {parts[-1].upper()}" if language else f"UD {code}"
        splits = tuple(s for s in ("train", "dev", "test") if s in e["splits"])
        out[code] = TreebankInfo(code, title, language, e["lang"], e["dataset"], splits)
    return out


def list_treebanks() -> list[TreebankInfo]:
    """The UD treebanks the registry knows (``load_treebank("ud:<code>")``)."""
    return sorted(_ud_catalogue().values(), key=lambda t: t.code)


def treebank_info(name: str) -> TreebankInfo:
    """Describe ``name`` as :func:`load_treebank` reads it ("sample", "ewt", "ko_gsd", "ud:ko_gsd", a path).

    A path's language comes from a UD-style file name (``ko_gsd-ud-dev.conllu`` -> ``ko``), else unknown.
    """
    if name == "sample":
        return TreebankInfo("sample", "bertology sample treebank", "English", "en", None, tuple(_SAMPLE_SIZES))
    code = name[3:] if name.startswith("ud:") else _ALIASES.get(name, name)
    code = _ALIASES.get(code, code)
    catalogue = _ud_catalogue()
    if code in catalogue:
        return catalogue[code]
    if name.startswith("ud:"):
        raise UnknownDatasetError(
            f"no UD treebank {code!r} in the registry; known: {', '.join(sorted(catalogue))}. To add one, put its "
            f"files' rows (dataset ud-<language>-<treebank>, file {code}-ud-<split>.conllu, bytes, sha256, pinned "
            "URL, license) into bertology/data/registry.tsv (scripts/make_registry.py builds them from a MANIFEST.tsv)")
    m = _UD_FILE.match(Path(name).name)
    lang = m[1] if m else None
    return TreebankInfo(Path(name).name, str(name), "English" if lang == "en" else None, lang, None, ())


def is_punct(sentence: Sentence):
    """Which words of ``sentence`` are punctuation, by UPOS ``PUNCT`` (any language), as a bool array."""
    import numpy as np

    return np.array([u == "PUNCT" for u in sentence.upos], dtype=bool)


def sample_path(name: str = "handmade.conllu") -> Path:
    """Path of a file shipped in ``bertology/data/samples``."""
    return _SAMPLES / name


class Treebank(list):
    """A list of :class:`Sentence` that remembers where it came from and what was filtered out.

    ``n_read`` counts sentences before filtering; ``n_too_long`` those dropped by ``max_words``.
    """

    def __init__(self, sentences=(), name: str = "", split: str = "", n_read: int = 0, n_too_long: int = 0,
                 info: TreebankInfo | None = None, note: str | None = None):
        super().__init__(sentences)
        self.name, self.split, self.n_read, self.n_too_long = name, split, n_read, n_too_long
        self.info, self.note = info, note  # note: e.g. that a train split was taken from dev

    def __repr__(self) -> str:
        return (f"Treebank(name={self.name!r}, split={self.split!r}, sentences={len(self)}, "
                f"n_read={self.n_read}, n_too_long={self.n_too_long})")


def load_treebank(name: str = "sample", split: str = "dev", limit: int | None = None,
                  max_words: int | None = None, seed: int = 0, train_from_dev: int | None = None) -> Treebank:
    """Load a treebank as a list of sentences with gold UD trees.

    ``name``:
      - ``"sample"`` (offline): ``dev`` = the hand-made sentences followed by 400 generated with
        ``seed``; ``test`` = 400 generated with ``seed + 1``; ``train`` = 2000 generated with ``seed + 2``.
      - ``"ewt"``: UD English-EWT, splits train/dev/test (dev 2001 sentences, test 2077).
      - ``"gum"``: UD English-GUM, splits dev/test (MISC keeps its coreference ``Entity=`` annotation).
      - ``"ud:<code>"`` or ``"<code>"``: any UD treebank with registry rows, e.g. ``"ud:ko_gsd"`` (UD
        Korean-GSD, dev 950 / test 989 sentences; its words are eojeols), ``"ud:en_ewt"``.
      - any other string: a path to a ``.conllu`` file (``split`` and ``seed`` are ignored).

    ``train_from_dev``: when ``split="train"`` is asked of a treebank without a registered train split,
    ``None`` (default) raises; an integer ``k`` takes the dev sentences from index ``k`` on instead
    (so the first ``k`` dev sentences can stay held out), and says so in ``result.note``.

    ``max_words`` drops sentences with more than that many (syntactic) words, e.g. to stay under a
    model's length limit; ``limit`` then keeps the first ``limit`` of the remaining sentences. How
    many were read and dropped is on the result (``n_read``, ``n_too_long``) and logged. Without
    ``max_words``, only the first ``limit`` sentences of the file are read (``n_read`` counts them).
    """
    info = treebank_info(name)
    note = None
    # without a length filter the first ``limit`` sentences are all that is needed: the rest is not parsed
    head = limit if max_words is None and limit else None  # (limit 0 keeps no sentence, as before)
    if name == "sample":
        if split not in _SAMPLE_SIZES:
            raise ValueError(f"sample treebank has splits {sorted(_SAMPLE_SIZES)}, not {split!r}")
        offset = {"dev": 0, "test": 1, "train": 2}[split]
        sentences = generate_treebank(_SAMPLE_SIZES[split], seed=seed + offset)
        if split == "dev":
            sentences = read_conllu(sample_path()) + sentences
    elif info.dataset is not None:
        if split == "train" and "train" not in info.splits and train_from_dev is not None and "dev" in info.splits:
            dev = read_conllu(data_path(info.dataset, f"{info.code}-ud-dev.conllu"),
                              limit=None if head is None else train_from_dev + head)
            sentences, split = dev[train_from_dev:], "train (from dev)"
            note = (f"{info.title} has no train split in the registry (mirror): training sentences are taken from "
                    f"its dev split" + (f" after the first {train_from_dev}, which stay held out" if train_from_dev else "")
                    + ".")
        elif split not in info.splits:
            raise ValueError(f"{name} has splits {list(info.splits)} in the registry, not {split!r}")
        else:
            sentences = read_conllu(data_path(info.dataset, f"{info.code}-ud-{split}.conllu"), limit=head)
    else:
        path = Path(os.path.expanduser(name))
        if not path.is_file():
            raise FileNotFoundError(
                f"{name!r} is neither a known treebank ('sample', 'ewt', 'gum', 'ud:<code>' with code one of "
                f"{', '.join(sorted(_ud_catalogue()))}) nor an existing CoNLL-U file")
        sentences = read_conllu(path, limit=head)
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
    return Treebank(sentences, name=name, split=split, n_read=n_read, n_too_long=n_too_long, info=info, note=note)


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
