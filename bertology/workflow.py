"""The model x notebook matrix as a Snakemake workflow: a YAML models file, its checks, the jobs.

The Snakefile shipped in ``bertology/data/workflow/`` is a thin shell around this module:
:func:`load_config` reads and checks the models file, :class:`Workflow` names one job per
(model, notebook) with its inputs (the notebook, a local checkpoint's files), its parameters
(the exact ``bertology run`` command line, so a changed model entry reruns only that model's
jobs) and its resources (threads, ``mem_mb``, ``runtime``, ``gpu``), and a final job rebuilds
the index with ``bertology index``. Each job runs ``bertology run --no-index`` so no two jobs
write ``runs.json`` or ``index.html``. See ``docs/workflow.md``.

The models file::

    notebooks: ["01", "03"]      # default for every model (default: all notebooks)
    quick: false                 # default for every model
    size: full                   # default for every model: full, or laptop (bertology.sizes)
    defaults: {device: auto}     # any per-model key, for every model
    models:
      - model: checkpoints/step-1000      # hub id, local directory (relative to this file) or "minilm"
        batch_size: 64
      - model: bert-base-uncased
        device: cuda
        data: ewt
        params: {n_pairs: 200}            # extra notebook parameters (-p KEY=VALUE)
        resources: {mem_mb: 32000, runtime: 240}  # threads, mem_mb, runtime (min), gpu
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from . import __version__
from .sizes import SIZES

#: Keys of one model entry (and of ``defaults``).
MODEL_KEYS = ("model", "notebooks", "quick", "size", "seed", "device", "batch_size", "data", "params", "resources")
#: Top-level keys of the models file.
TOP_KEYS = ("out", "notebook_dir", "notebooks", "quick", "size", "defaults", "models")
#: Resources of every job unless the model entry sets them. ``gpu`` is 0 for ``device: cpu``.
#: Sized for a BERT-base model on full data; quick runs of small models need far less.
DEFAULT_RESOURCES = {"threads": 4, "mem_mb": 16000, "runtime": 240, "gpu": 1}
WEIGHT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


class WorkflowConfigError(ValueError):
    """The models file is wrong; the message names the file, the line and the key."""


def default_notebook_dir() -> Path:
    """The repo's ``notebooks/`` (next to the package in a checkout), else ``./notebooks``."""
    repo_nbs = Path(__file__).resolve().parents[1] / "notebooks"
    return repo_nbs if repo_nbs.is_dir() else Path("notebooks")


# --------------------------------------------------------------------------- reading the file
def _key_lines(text: str) -> dict[tuple, int]:
    """1-based line of every mapping key and list item, by path (``("models", 0, "device")``)."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (key.value,)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


class _Checker:
    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, _key_lines(text)

    def fail(self, keys: tuple, problem: str):
        where = str(self.path)
        for n in range(len(keys), 0, -1):  # the nearest key that has a line
            if keys[:n] in self.lines:
                where += f", line {self.lines[keys[:n]]}"
                break
        name = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k)) for i, k in enumerate(keys))
        raise WorkflowConfigError(f"{where}: {name}: {problem}" if name else f"{where}: {problem}")

    def mapping(self, value, keys: tuple, allowed: tuple) -> dict:
        if not isinstance(value, dict):
            self.fail(keys, f"expected a mapping of {', '.join(allowed)}, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                self.fail(keys + (key,), f"unknown key; allowed here: {', '.join(allowed)}")
        return value


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


@dataclass(frozen=True)
class Job:
    """One (model, notebook) job: what it reads, the command it runs, what it asks for."""

    slug: str
    notebook: Path
    args: tuple[str, ...]  # arguments of ``bertology`` (``run --model ... --no-index``)
    inputs: tuple[str, ...]  # files whose change reruns the job (notebook, checkpoint files)
    resources: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.notebook.stem

    @property
    def outputs(self) -> tuple[str, str]:
        """Report files relative to the reports folder: the HTML and the results.json."""
        return f"{self.slug}/{self.stem}.html", f"{self.slug}/{self.stem}/results.json"

    @property
    def args_text(self) -> str:
        return shlex.join(self.args)


@dataclass
class Workflow:
    config_file: Path
    out: Path
    jobs: dict[tuple[str, str], Job]

    def job(self, slug: str, stem: str) -> Job:
        try:
            return self.jobs[(slug, stem)]
        except KeyError:
            raise KeyError(f"no job for model {slug!r} and notebook {stem!r} in {self.config_file}") from None

    def reports(self) -> list[str]:
        """Every job's HTML report, relative to the reports folder (the index job's inputs)."""
        return [j.outputs[0] for j in self.jobs.values()]


def load_config(path: str | os.PathLike, out: str | os.PathLike | None = None,
                notebook_dir: str | os.PathLike | None = None) -> Workflow:
    """Read and check the models file; every problem raises :class:`WorkflowConfigError`.

    Relative model paths, ``data`` files and ``notebook_dir`` in the file are read relative to
    the file; ``out`` (argument, else the file's ``out``, else ``reports``) relative to the
    current directory, unless it is taken from the file.
    """
    import yaml

    from .report import discover_notebooks, model_slug, resolve_notebooks

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowConfigError(f"{path}: cannot read the models file ({exc.strerror or exc})") from None
    check = _Checker(path, text)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise WorkflowConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    doc = check.mapping(doc, (), TOP_KEYS)
    base = path.resolve().parent

    if out is None:
        out = doc.get("out", "reports")
        if not isinstance(out, str) or not out:
            check.fail(("out",), f"expected a folder name, got {_kind(out)}")
        out = base / out
    nb_dir = notebook_dir or doc.get("notebook_dir")
    if nb_dir is None:
        nb_dir = default_notebook_dir()
    elif notebook_dir is None:
        if not isinstance(nb_dir, str):
            check.fail(("notebook_dir",), f"expected a folder, got {_kind(nb_dir)}")
        nb_dir = base / nb_dir
    nb_dir = Path(nb_dir).resolve()
    if not discover_notebooks(nb_dir):
        check.fail(("notebook_dir",), f"no notebooks (NN_name.ipynb) in {nb_dir}")

    defaults = doc.get("defaults") or {}
    check.mapping(defaults, ("defaults",), tuple(k for k in MODEL_KEYS if k != "model"))
    for key in ("notebooks", "quick", "size"):
        if key in doc:
            defaults = {key: doc[key], **defaults}
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        check.fail(("models",), f"expected a list of model entries (each with a `model:` key), got {_kind(models)}")

    jobs: dict[tuple[str, str], Job] = {}
    slugs: dict[str, int] = {}
    for i, entry in enumerate(models):
        keys = ("models", i)
        if isinstance(entry, str):
            entry = {"model": entry}
        check.mapping(entry, keys, MODEL_KEYS)
        if "model" not in entry:
            check.fail(keys, "each entry needs a `model:` (hub id, local directory or minilm)")
        spec = {**defaults, **entry}
        where = {k: (keys + (k,) if k in entry else ("defaults", k) if k in (doc.get("defaults") or {})
                     else (k,)) for k in spec}
        model = _model_name(check, spec["model"], where["model"], base)
        slug = model_slug(model)
        if slug in slugs:
            check.fail(where["model"], f"reports of this model would go to {slug}/, as those of models[{slugs[slug]}]; "
                                       "give the checkpoints folders with distinct last names")
        slugs[slug] = i
        try:
            notebooks = resolve_notebooks(_str_list(check, spec.get("notebooks"), where.get("notebooks")), nb_dir)
        except ValueError as exc:
            check.fail(where["notebooks"], str(exc))
        quick = spec.get("quick", False)
        if not isinstance(quick, bool):
            check.fail(where["quick"], f"expected true or false, got {_kind(quick)}")
        size = spec.get("size", "full")
        if size not in SIZES:
            check.fail(where["size"], f"expected one of {', '.join(SIZES)}, got {_kind(size)}")
        seed = spec.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            check.fail(where["seed"], f"expected an integer, got {_kind(seed)}")
        device = spec.get("device", "auto")
        if not isinstance(device, str) or not device:
            check.fail(where["device"], f"expected a device such as auto, cpu, cuda, cuda:1, got {_kind(device)}")
        extra = _params(check, spec, where, base)
        res = _resources(check, spec.get("resources"), where.get("resources"), device)
        inputs = _model_files(model)
        for nb in notebooks:
            declared = _declared(nb)
            args = ["run", "--model", model, "--notebooks", nb.stem, "--out", ".", "--seed", str(seed),
                    "--device", device, "--notebook-dir", str(nb_dir), "--no-index"]
            if quick:
                args.append("--quick")
            if size != "full":
                args += ["--size", size]
            for key, value in extra.items():
                if key in declared:
                    args += ["-p", f"{key}={json.dumps(value)}"]
            job = Job(slug, nb, tuple(args), (str(nb), *inputs), res)
            jobs[(slug, nb.stem)] = job
        for key in extra:
            if not any(key in _declared(nb) for nb in notebooks):
                check.fail(where[key] if key in where else where["params"] + (key,),
                           f"no notebook of this model ({', '.join(nb.stem for nb in notebooks)}) has a "
                           f"parameter {key!r}")
    return Workflow(path, Path(out), jobs)


def _model_name(check: _Checker, value, keys: tuple, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        check.fail(keys, f"expected a hub id, a local directory or minilm, got {_kind(value)}")
    value = value.strip()
    local = Path(value).expanduser()
    if not local.is_absolute():
        local = base / local
    looks_local = value.startswith((".", "/", "~")) or local.is_dir()
    if looks_local:
        if not local.is_dir():
            check.fail(keys, f"no such checkpoint directory: {local}")
        if not (local / "config.json").is_file():
            check.fail(keys, f"{local} holds no config.json, so it is not a model checkpoint")
        return str(local.resolve())
    return value


def _str_list(check: _Checker, value, keys: tuple | None) -> list[str] | None:
    if value is None or value == "all":
        return None
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        check.fail(keys, f'expected a list of notebooks such as ["01", "03"] or all, got {_kind(value)}')
    return [f"{v:02d}" if isinstance(v, int) else v for v in value]


def _params(check: _Checker, spec: dict, where: dict, base: Path) -> dict[str, Any]:
    """The notebook parameters of a model entry: batch_size, data and the ``params`` mapping."""
    from .report import RESERVED_PARAMS

    params = spec.get("params") or {}
    if not isinstance(params, dict):
        check.fail(where["params"], f"expected a mapping of notebook parameters, got {_kind(params)}")
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            check.fail(where["params"] + (key,), "a notebook parameter name must be a Python identifier")
        if key in RESERVED_PARAMS or key in ("batch_size", "data", "size"):
            own = "out" if key == "output_dir" else key
            check.fail(where["params"] + (key,), f"set {own} as its own key of the model entry, not under params")
        extra[key] = value
    if "batch_size" in spec:
        bs = spec["batch_size"]
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            check.fail(where["batch_size"], f"expected a positive integer, got {_kind(bs)}")
        extra["batch_size"] = bs
    if "data" in spec:
        data = spec["data"]
        if not isinstance(data, str) or not data:
            check.fail(where["data"], f"expected a data set name (auto, ewt, sample, ...) or a file, got {_kind(data)}")
        if data.endswith((".conllu", ".tsv", ".jsonl", ".txt")) and not Path(data).is_absolute():
            data = str((base / data).resolve())
        extra["data"] = data
    return extra


def _resources(check: _Checker, value, keys: tuple | None, device: str) -> dict:
    res = dict(DEFAULT_RESOURCES)
    if device == "cpu" or device.startswith("mps"):
        res["gpu"] = 0
    if value is None:
        return res
    if not isinstance(value, dict):
        check.fail(keys, f"expected a mapping such as {{mem_mb: 16000, runtime: 120, gpu: 1}}, got {_kind(value)}")
    for key, v in value.items():
        if key not in DEFAULT_RESOURCES:
            check.fail(keys + (key,), f"unknown resource; allowed: {', '.join(DEFAULT_RESOURCES)} "
                                      "(set Slurm partitions and accounts in the profile, see docs/workflow.md)")
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "threads" else 0):
            check.fail(keys + (key,), f"expected a {'positive' if key == 'threads' else 'non-negative'} "
                                      f"integer, got {_kind(v)}")
        res[key] = v
    return res


def _model_files(model: str) -> tuple[str, ...]:
    """A local checkpoint's config, tokenizer and weight files: touching one reruns the model's jobs."""
    path = Path(model)
    if not path.is_absolute() or not path.is_dir():
        return ()
    return tuple(str(f) for f in sorted(path.iterdir()) if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


_DECLARED: dict[Path, frozenset] = {}


def _declared(nb: Path) -> frozenset:
    """Names of the notebook's parameters (its cell tagged ``parameters``)."""
    if nb not in _DECLARED:
        from papermill import inspect_notebook

        _DECLARED[nb] = frozenset(inspect_notebook(str(nb)))
    return _DECLARED[nb]


# --------------------------------------------------------------------------- the Snakefile
def workflow_dir() -> Path:
    """Folder of the shipped Snakefile, example models file and Slurm profile."""
    return Path(str(importlib_resources.files("bertology") / "data" / "workflow"))


def snakefile() -> Path:
    return workflow_dir() / "Snakefile"


def write_files(dest: str | os.PathLike) -> list[Path]:
    """Copy the Snakefile, ``models.example.yaml`` and ``profiles/slurm/`` into ``dest``."""
    src, dest = workflow_dir(), Path(dest)
    written = []
    for f in sorted(src.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            target = dest / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            written.append(target)
    return written


def snakemake_command(models: str | os.PathLike, out: str | os.PathLike | None = None,
                      extra: list[str] | None = None) -> list[str]:
    """The ``snakemake`` command line for a models file (checked first); ``extra`` is appended.

    Snakemake runs in the reports folder (its ``.snakemake/`` bookkeeping lives there too), with
    ``--cores all`` unless ``extra`` says otherwise.
    """
    wf = load_config(models, out=out)
    extra = list(extra or [])
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile()),
           "--directory", str(wf.out.resolve()),
           "--config", f"models={Path(models).resolve()}", f"out={wf.out.resolve()}"]
    if not any(a in ("--cores", "-c", "--jobs", "-j", "--profile", "--executor", "-e") or
               a.startswith(("--cores=", "--jobs=", "--profile=", "--executor=")) for a in extra):
        cmd += ["--cores", "all"]
    return cmd + extra


def bertology_command() -> str:
    """How a job calls ``bertology``: this Python with ``-m bertology.cli`` (no PATH needed)."""
    return f"{shlex.quote(sys.executable)} -m bertology.cli"


def version() -> str:
    return __version__
