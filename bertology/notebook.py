"""What every notebook does first and last: check parameters, seed, load, record results.

A notebook calls :func:`start` in its first code cell after the parameters cell and
:meth:`Run.save` in its last; everything in between goes through :meth:`Run.table` and
:meth:`Run.figure`, so each report leaves ``results.json``, CSV tables and PNG/SVG figures
that a program can check.
"""
from __future__ import annotations

import platform
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .io import atomic_write_json, atomic_write_text
from .models import LoadedModel, load_model

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class ParameterError(ValueError):
    """A notebook parameter has the wrong type or value; the message names it."""


def check_params(model, seed, quick, device, output_dir, **sizes) -> None:
    """Validate the common notebook parameters plus positive-integer ``sizes``."""
    if not isinstance(model, str) or not model.strip():
        raise ParameterError(f"parameter 'model' must be a model name or path, got {model!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"parameter 'seed' must be a non-negative integer, got {seed!r}")
    if not isinstance(quick, bool):
        raise ParameterError(f"parameter 'quick' must be True or False, got {quick!r}")
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ParameterError(f"parameter 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not isinstance(output_dir, (str, Path)):
        raise ParameterError(f"parameter 'output_dir' must be a path, got {output_dir!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ParameterError(f"parameter {name!r} must be a positive integer, got {value!r}")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """One notebook run: the model, where outputs go, and everything recorded so far."""

    notebook: str
    loaded: LoadedModel
    output_dir: Path
    seed: int
    quick: bool
    device: str
    meta: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def info(self):
        return self.loaded.info

    def table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        """Record a tidy table: ``<name>.csv`` now, and into ``results.json`` at :meth:`save`."""
        atomic_write_text(self.output_dir / f"{name}.csv", df.to_csv(index=False))
        self.tables[name] = df
        return df

    def figure(self, fig, name: str, key: bool = False):
        """Save a figure as ``figures/<name>.png`` and ``.svg``; return it for display.
        ``key=True`` makes it the report's thumbnail in the index."""
        from .plots import save_figure

        save_figure(fig, self.output_dir, name)
        self.meta.setdefault("figures", []).append(name)
        if key:
            self.meta["key_figure"] = name
        return fig

    def value(self, key: str, value) -> None:
        self.values[key] = value

    def key(self, name: str, value: float) -> None:
        """A headline number; ``reports/index.html`` puts these side by side across models."""
        self.values.setdefault("key_numbers", {})[name] = None if value is None else round(float(value), 4)

    def note(self, text: str) -> None:
        self.meta.setdefault("notes", []).append(text)

    def deviation(self, text: str) -> None:
        """Where this run departs from the paper (model, data, method); shown in the report header."""
        self.meta.setdefault("deviations", []).append(text)

    def method(self, study: str, **options) -> list[str]:
        """Record the declared deviations of ``study`` (see :mod:`bertology.fidelity`) that apply
        under ``options`` in the report header, each once; return their texts."""
        from .fidelity import lines

        have = self.meta.setdefault("deviations", [])
        out = lines(study, **options)
        have.extend(t for t in out if t not in have)
        self.meta.setdefault("methods", {})[study] = {k: _plain(v) for k, v in options.items()}
        return out

    @property
    def cache_dir(self) -> Path:
        """Feature cache of this machine (``$BERTOLOGY_CACHE/features``)."""
        from .extract import default_cache_dir

        return default_cache_dir()

    def treebank(self, data: str = "auto", split: str = "dev", limit: int | None = None, train_from_dev: int = 0):
        """Load gold-parsed sentences and record where they came from.

        ``data="auto"`` takes UD English EWT (mirror, cache or download) and falls back to the
        sample treebank shipped in the package when EWT cannot be had, saying so in the report.
        Any UD treebank of the registry works too (``"ud:ko_gsd"``, ``"ko_gsd"``); its language is
        recorded (``meta["language"]``, the report header). A treebank without a train split gives
        its dev sentences from index ``train_from_dev`` on for ``split="train"``, with a note. The
        share of words the tokenizer maps to its unknown token is kept (``values["unknown_rate"]``)
        and noted when above 5% (the model's vocabulary does not fit the language).
        """
        from .data import DataUnavailableError, load_treebank

        if data == "auto":
            try:
                sents = load_treebank("ewt", split, limit=limit)
            except DataUnavailableError as exc:
                self.note(f"UD English EWT is not available here ({str(exc).splitlines()[0]}); "
                          "using the sample treebank shipped with bertology.")
                sents = load_treebank("sample", split, limit=limit)
        else:
            if not isinstance(data, str) or not data:
                raise ParameterError(f"parameter 'data' must be 'auto', 'ewt', 'gum', 'sample', 'ud:<treebank>' "
                                     f"or a path, got {data!r}")
            sents = load_treebank(data, split, limit=limit, train_from_dev=train_from_dev)
        info = sents.info
        if sents.note and sents.note not in self.meta.get("notes", []):
            self.note(sents.note)
        from .align import unknown_rate, vocabulary_note

        rate = unknown_rate(self.loaded.tokenizer, [s.words for s in sents])
        self.values.setdefault("unknown_rate", {})[sents.split or split] = rate
        msg = vocabulary_note(rate, self.info.name, info.language)
        if msg and msg not in self.meta.get("notes", []):
            self.note(msg)
        if info.language_code:
            self.meta["language"] = {"code": info.language_code, "name": info.language or info.language_code}
            self.meta["treebank"] = info.title
        self.set_data(f"{info.title} ({sents.split or split})" if info.dataset or info.code == "sample"
                      else info.title, sentences=len(sents))
        return sents

    def sentence_pairs(self, data: str = "auto", split: str = "dev", n_pairs: int | None = None):
        """Pairs of consecutive sentences for ``[CLS] A [SEP] B [SEP]`` inputs (Clark et al. §3)."""
        from .data import sentence_pairs

        pairs = sentence_pairs(self.treebank(data, split))
        return pairs[:n_pairs] if n_pairs else pairs

    def set_data(self, description: str, **sizes) -> None:
        self.meta["data"] = description
        self.meta.setdefault("sizes", {}).update(sizes)

    def save(self) -> Path:
        import torch
        import transformers

        self.meta.update(
            elapsed_s=round(time.perf_counter() - self.started, 2),
            python=platform.python_version(),
            torch=torch.__version__,
            transformers=transformers.__version__,
        )
        doc = {
            "meta": self.meta,
            "tables": {k: _records(v) for k, v in self.tables.items()},
            "values": self.values,
        }
        return atomic_write_json(self.output_dir / "results.json", doc)


def _plain(value):
    """An option value as JSON can hold it (numbers, strings, lists; anything else as its repr)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _records(df: pd.DataFrame) -> list[dict]:
    import json

    return json.loads(df.to_json(orient="records", double_precision=10))


def start(notebook: str, model: str = "minilm", seed: int = 0, quick: bool = False, device: str = "auto",
          output_dir: str | Path = ".", paper_model: str = "bert-base-uncased", **sizes) -> Run:
    """Check parameters, seed every generator, load the model and open the run record.

    ``paper_model`` is the model the reproduced paper used; running another one is recorded as
    a deviation in the report header.
    """
    check_params(model, seed, quick, device, output_dir, **sizes)
    from .plots import set_style

    seed_everything(seed)
    set_style()
    loaded = load_model(model, device=device)
    out = Path(output_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    info = loaded.info
    meta = {
        "notebook": notebook,
        "model": info.name,
        "model_revision": info.revision,
        "model_info": info.to_dict(),
        "seed": seed,
        "quick": quick,
        "device": str(loaded.device),
        "version": __version__,
        "sizes": dict(sizes),
        "notes": [],
        "deviations": [],
    }
    run = Run(notebook, loaded, out, seed, quick, str(loaded.device), meta)
    if info.name != paper_model:
        run.deviation(f"Model: {info.name} ({info.n_layers} layers x {info.n_heads} heads, "
                      f"{'with' if info.has_mlm_head else 'without'} masked-LM head); the paper used {paper_model}.")
    return run
