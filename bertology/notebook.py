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
from .models import PRECISIONS, LoadedModel, check_precision_speed, load_model
from .sizes import check as check_size, sampled_note

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class ParameterError(ValueError):
    """A notebook parameter has the wrong type or value; the message names it."""


def check_params(model, seed, quick, device, output_dir, optional=(), **sizes) -> None:
    """Validate the common notebook parameters plus positive-integer ``sizes``.

    A size named in ``optional`` may also be ``None``, which means "no limit" (all items); in a
    parameters cell write it as ``max_train_pairs = None  # None: all pairs`` (no ``=`` in the
    comment: papermill's parameter parser warns on a line with two).
    """
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
    unknown = set(optional) - set(sizes)
    if unknown:
        raise ValueError(f"optional names sizes that were not passed: {sorted(unknown)}")
    for name, value in sizes.items():
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            what = "a positive integer or None (no limit)" if name in optional else "a positive integer"
            raise ParameterError(f"parameter {name!r} must be {what}, got {value!r}")


def check_choice(name: str, value, choices):
    """``value`` if it is one of ``choices``, else a :class:`ParameterError` naming parameter ``name``."""
    if isinstance(value, bool) or value not in tuple(choices):
        raise ParameterError(f"parameter {name!r} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


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
    #: where the run's text came from, as :meth:`treebank` was asked or resolved it
    #: ("ewt", "gum", "sample" or a path); None until data is loaded
    data_source: str | None = None

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

    def record(self, **values) -> None:
        """Several :meth:`value` entries at once: ``run.record(probe_layer=6, ranges=[99, 999])``."""
        self.values.update(values)

    def key(self, name: str, value: float) -> None:
        """A headline number; ``reports/index.html`` puts these side by side across models."""
        self.values.setdefault("key_numbers", {})[name] = None if value is None else round(float(value), 4)

    def keys(self, numbers: dict) -> dict:
        """Several headline numbers at once (``{name: value}``, e.g. a study's ``key_numbers(...)``);
        returns all key numbers recorded so far."""
        for name, value in numbers.items():
            self.key(name, value)
        return self.values.get("key_numbers", {})

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
        self.data_source = {"en_ewt": "ewt", "en_gum": "gum"}.get(info.code, info.code)
        self.set_data(f"{info.title} ({sents.split or split})" if info.dataset or info.code == "sample"
                      else info.title, sentences=len(sents))
        return sents

    def sentence_pairs(self, data: str = "auto", split: str = "dev", n_pairs: int | None = None):
        """Pairs of consecutive sentences for ``[CLS] A [SEP] B [SEP]`` inputs (Clark et al. §3)."""
        from .data import sentence_pairs

        pairs = sentence_pairs(self.treebank(data, split))
        return pairs[:n_pairs] if n_pairs else pairs

    def scorer(self, source: str = "auto", layer=-1, *, use: str = "Cloze scores", paper: str | None = None,
               fit: bool = True):
        """The cloze scorer of this run (see :mod:`bertology.scorers`), recorded in ``values["sources"]``.

        ``source``: ``"auto"`` (the model's masked-LM head when it has one, else a fitted readout),
        ``"mlm"``, ``"readout"`` or ``"control"`` (same architecture, random weights, seeded with the
        run's seed). ``layer``: hidden state the readout reads (0 = embeddings, -1 = last layer).
        When a readout stands in for the model's own head the report gets the standard note, and,
        if ``paper`` is given, the deviation "``use`` from a fitted readout (layer k), not the
        model's own MLM head as in ``paper``". ``fit=False`` (quick runs): a readout that is neither
        shipped nor cached is not fitted; the run notes it and this returns None.
        """
        from .cloze import get_scorer
        from .labels import hidden_layer

        check_choice("source", source, SOURCES)
        if source == "auto":
            source = "mlm" if self.info.has_mlm_head else "readout"
        if source == "readout":
            try:
                layer = hidden_layer(layer, self.info.n_layers)
            except ValueError as exc:
                raise ParameterError(f"readout layer: {exc}") from None
            if not fit and not readout_ready(self.loaded, layer):
                self.note(f"No readout head for layer {layer} of {self.info.name} is shipped or cached, and this run "
                          "does not fit one (quick mode); only the other sources were scored.")
                return None
        scorer = get_scorer(self.loaded, source=source, layer=layer if source == "readout" else None, seed=self.seed)
        self.values.setdefault("sources", {})[scorer.source] = scorer.label
        if scorer.source == "readout":
            self.meta["readout_layer"] = scorer.layer
            self.note(readout_note(self.info.name, scorer.label))
            if paper:
                self.deviation(f"{use} from a fitted readout (layer {scorer.layer}), not the model's own MLM head "
                               f"as in {paper}.")
        return scorer

    def source_lines(self) -> list[str]:
        """The standard "what this run shows" line on where cloze numbers came from (empty when the
        model's own head answered or no readout was used)."""
        if "readout" not in self.values.get("sources", {}) or "mlm" in self.values["sources"]:
            return []
        return [f"**The model's own MLM head could not be evaluated** ({self.info.name} has none): `readout` numbers say "
                f"what a head fitted on layer {self.meta.get('readout_layer', '?')} can decode, and `control` numbers "
                "what a random network gives."]

    def findings(self, lines) -> None:
        """Show the "what this run shows" bullets (``lines`` from a study's findings function) plus
        :meth:`source_lines`, as Markdown."""
        from IPython.display import Markdown, display

        display(Markdown("\n".join(f"- {line}" for line in [*lines, *self.source_lines()])))

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
        from .profiling import flush

        flush()  # where the time went, for benchmarks/bench_reports.py (only when BERTOLOGY_TIMINGS is set)
        return atomic_write_json(self.output_dir / "results.json", doc)


#: cloze scorer sources :meth:`Run.scorer` accepts
SOURCES = ("auto", "mlm", "readout", "control")


def readout_note(model_name: str, label: str) -> str:
    """The standard report note when a fitted readout answers cloze questions for a model."""
    return (f"{model_name} has no masked-LM head, so its own cloze predictions could NOT be evaluated. Numbers "
            f"labelled 'readout' come from {label}: a head fitted by us, which tests whether the answer is decodable "
            "from that layer, not what the model itself predicts. A model with an MLM head (e.g. bert-base-uncased, "
            "online) is scored with source='mlm'; 'control' is the same architecture with random weights.")


def readout_ready(loaded: LoadedModel, layer: int) -> bool:
    """Whether a fitted readout for hidden-state ``layer`` is shipped or cached, so using it fits nothing."""
    from .readout import FitSettings, cache_path, shipped_readouts

    shipped = shipped_readouts(loaded)
    if shipped is not None and str(layer) in shipped[1].get("layers", {}):
        return True
    return cache_path(loaded, layer, FitSettings()).exists()


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
          output_dir: str | Path = ".", paper_model: str = "bert-base-uncased", optional=(),
          precision: str = "float32", size: str = "full", **sizes) -> Run:
    """Check parameters, seed every generator, load the model and open the run record.

    ``sizes`` are positive integers; those named in ``optional`` may be None ("no limit").
    ``paper_model`` is the model the reproduced paper used; running another one is recorded as
    a deviation in the report header. ``precision`` (``"float32"``, ``"bfloat16"``, or
    ``"float16"`` on CUDA) is the engine's compute precision; anything but float32 is a deviation.
    ``size`` names the notebook's size preset (:mod:`bertology.sizes`; the notebook has applied it
    to ``sizes`` already): outside quick mode, every size below its full default is a deviation.
    """
    check_params(model, seed, quick, device, output_dir, optional=optional, **sizes)
    try:
        check_size(size)
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    if precision not in PRECISIONS:
        raise ParameterError(f"parameter 'precision' must be one of {PRECISIONS}, got {precision!r}")
    from .plots import set_style

    seed_everything(seed)
    set_style()
    speedup = None
    try:
        if precision != "float32":
            speedup = check_precision_speed(precision, device)
        loaded = load_model(model, device=device, precision=precision)
    except ValueError as exc:
        if precision == "float32" or "precision" not in str(exc):
            raise
        raise ParameterError(f"parameter 'precision': {exc}") from None
    import torch

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
        "precision": precision,
        "cpu_threads": torch.get_num_threads(),  # can change the last bits of a sum; in the header
        "version": __version__,
        "size": size,
        "sizes": dict(sizes),
        "notes": [],
        "deviations": [],
    }
    run = Run(notebook, loaded, out, seed, quick, str(loaded.device), meta)
    if precision != "float32":
        run.deviation(f"Precision: every forward pass runs under torch.autocast in {precision} (matrix products in "
                      f"{precision}; softmax and layer norms in float32); the authors computed in float32. "
                      "On MiniLM (two sentences, measured 2026-12-02) attention weights moved by at most 0.014 "
                      "(mean 0.0003), hidden states by under 1% of their norm, and up to 1.5% of rows changed "
                      "their most-attended token; findings near a tie can flip."
                      + (" Passes that take gradients (gradient importance, head importance) and the structural "
                         "probes' training run in float32: "
                         "float16 gradients underflow without loss scaling." if precision == "float16" else ""))
        if speedup is not None:
            run.note(f"{precision} matrix products ran {speedup:.1f}x as fast as float32 on this CPU "
                     "(a 512x768x768 product timed when the run started).")
    below = None if quick else sampled_note(notebook, size, sizes)
    if below:
        run.deviation(below)
    if info.name != paper_model:
        run.deviation(f"Model: {info.name} ({info.n_layers} layers x {info.n_heads} heads, "
                      f"{'with' if info.has_mlm_head else 'without'} masked-LM head); the paper used {paper_model}.")
    return run
