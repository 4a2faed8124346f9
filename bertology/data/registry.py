"""Where public data files come from, and how a local copy is found or fetched.

Every file the package may read is listed in ``registry.tsv`` (dataset, file, bytes, sha256,
pinned URL, license; regenerate with ``scripts/make_registry.py``). :func:`data_path` resolves a
registered file to a verified local path, trying in order:

1. a local mirror: ``$BERTOLOGY_DATA/<dataset>/<file>`` (works fully offline);
2. the cache: ``$BERTOLOGY_CACHE/data/<dataset>/<file>`` (cache root defaults to ``~/.cache/bertology``);
3. a download from the registry URL into the cache (temp file, checked, then renamed into place).

Every file handed out has the registered size and sha256, whichever way it was found.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "RegistryEntry", "UnknownDatasetError", "DataUnavailableError", "DataIntegrityError",
    "data_path", "list_datasets", "dataset_info", "registry_entry", "cache_root",
]

log = logging.getLogger(__name__)

_REGISTRY_FILE = Path(__file__).with_name("registry.tsv")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RegistryEntry:
    dataset: str
    file: str
    bytes: int
    sha256: str
    url: str
    license: str


class UnknownDatasetError(KeyError):
    """A dataset or file name that the registry does not list."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0]) if self.args else ""


class DataUnavailableError(RuntimeError):
    """A registered file is in neither the mirror nor the cache and could not be downloaded."""


class DataIntegrityError(ValueError):
    """A file's size or sha256 differs from the registry."""


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict[str, RegistryEntry]]:
    """dataset -> file -> entry. Tests add toy datasets to this dict with ``monkeypatch.setitem``."""
    out: dict[str, dict[str, RegistryEntry]] = {}
    with open(_REGISTRY_FILE, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            e = RegistryEntry(r["dataset"], r["file"], int(r["bytes"]), r["sha256"], r["url"], r["license"])
            out.setdefault(e.dataset, {})[e.file] = e
    return out


def list_datasets() -> list[str]:
    return sorted(_entries())


def _files(dataset: str) -> dict[str, RegistryEntry]:
    reg = _entries()
    if dataset not in reg:
        raise UnknownDatasetError(f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(reg))}")
    return reg[dataset]


def registry_entry(dataset: str, file: str) -> RegistryEntry:
    files = _files(dataset)
    if file not in files:
        raise UnknownDatasetError(f"dataset {dataset!r} has no file {file!r}; its files: {', '.join(sorted(files))}")
    return files[file]


def dataset_info(dataset: str) -> dict:
    """License, files, total bytes and URLs of one dataset, e.g. for a data-provenance table."""
    files = _files(dataset)
    licenses = sorted({e.license for e in files.values()})
    return {
        "dataset": dataset,
        "license": "; ".join(licenses),
        "files": sorted(files),
        "bytes": sum(e.bytes for e in files.values()),
        "urls": {f: e.url for f, e in sorted(files.items())},
    }


def cache_root() -> Path:
    return Path(os.environ.get("BERTOLOGY_CACHE") or Path.home() / ".cache" / "bertology")


# Hashes already verified in this process, keyed by what would change if the file did.
_verified: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, entry: RegistryEntry) -> str | None:
    """None if ``path`` matches the entry, else a description of the mismatch."""
    st = path.stat()
    if st.st_size != entry.bytes:
        return f"size {st.st_size} bytes, expected {entry.bytes}"
    key = (str(path), st.st_mtime_ns, st.st_size)
    digest = _verified.get(key)
    if digest is None:
        digest = _sha256_file(path)
        _verified[key] = digest
    if digest != entry.sha256:
        return f"sha256 {digest}, expected {entry.sha256}"
    return None


def _download(entry: RegistryEntry, dest: Path) -> None:
    """Fetch ``entry.url`` to ``dest`` atomically: other processes see the old file or the checked new one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
        if size != entry.bytes or h.hexdigest() != entry.sha256:
            raise DataIntegrityError(
                f"{entry.dataset}/{entry.file}: download from {entry.url} has {size} bytes, sha256 "
                f"{h.hexdigest()}; the registry expects {entry.bytes} bytes, sha256 {entry.sha256}")
        os.replace(tmp, dest)
        st = dest.stat()
        _verified[(str(dest), st.st_mtime_ns, st.st_size)] = entry.sha256  # hashed while downloading
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_path(dataset: str, file: str) -> Path:
    """Local path of a registered file, checked against its registered size and sha256.

    Raises :class:`UnknownDatasetError` for names not in the registry, :class:`DataIntegrityError`
    when the mirror holds a different file, and :class:`DataUnavailableError` when the file has
    to be downloaded and cannot be (e.g. offline).
    """
    entry = registry_entry(dataset, file)

    mirror = os.environ.get("BERTOLOGY_DATA")
    if mirror:
        p = Path(mirror).expanduser() / dataset / file
        if p.is_file():
            problem = _check(p, entry)
            if problem:
                # The mirror is read-only to us and was put there on purpose: say so, never overwrite.
                raise DataIntegrityError(
                    f"{p} (BERTOLOGY_DATA mirror) does not match the registry for {dataset}/{file}: "
                    f"{problem}. Replace it with the file from {entry.url}, or unset BERTOLOGY_DATA.")
            return p
        log.debug("%s not in mirror %s; trying the cache", p, mirror)

    cached = cache_root() / "data" / dataset / file
    if cached.is_file():
        problem = _check(cached, entry)
        if problem is None:
            return cached
        log.warning("cached %s is corrupt (%s); downloading it again", cached, problem)
        cached.unlink(missing_ok=True)

    log.info("downloading %s/%s from %s", dataset, file, entry.url)
    try:
        _download(entry, cached)
    except DataIntegrityError:
        raise
    except Exception as exc:  # URLError, timeouts, HTTP errors, full disk: all mean "not available"
        where = f" (not found in the BERTOLOGY_DATA mirror {mirror})" if mirror else ""
        raise DataUnavailableError(
            f"cannot get {dataset}/{file}{where}: download from {entry.url} failed ({exc}); "
            f"it would have been cached at {cached}. To work offline, set BERTOLOGY_DATA to a local "
            f"mirror directory holding {dataset}/{file}.") from exc
    return cached
