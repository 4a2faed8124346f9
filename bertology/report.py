"""Run the notebooks with papermill and publish them as HTML reports, plus an index page.

Layout under ``out`` (default ``reports/``), for model slug ``M`` and notebook stem ``S``::

    reports/index.html              static overview of every model and notebook
    reports/runs.json               "M/S" -> {"latest": run record, "last_good": run record}
    reports/M/S.ipynb, S.html       the executed notebook and its HTML rendering
    reports/M/S/                    the notebook's output_dir: figures/, *.csv, results.json
    reports/M/S.failed.ipynb        the executed notebook of the latest failed run, if any
    reports/M/S.run.json            a job's run record, only with ``update_index=False`` (workflow jobs);
                                    :func:`merge_job_records` moves it into runs.json

Notebooks run in ``reports/.staging/<random>/``; only a run that succeeds (and writes
results.json) is moved into place, so a failing run never damages the last good report.
"""
from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

import pandas as pd

from . import __version__
from .io import atomic_write_json, atomic_write_text, replace_dir

# Parameters every notebook declares; the runner sets them, so ``params`` may not.
RESERVED_PARAMS = ("model", "quick", "seed", "device", "output_dir")
HEADER_TAG = "bertology-report-header"
_PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"  # papermill's marker cells on failure
_NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------- notebooks
#: Environment variable that picks the kernels' transport: "ipc" (default, POSIX) or "tcp".
KERNEL_TRANSPORT_ENV = "BERTOLOGY_KERNEL_TRANSPORT"
#: Longest socket path the kernel's IPC transport may use (AF_UNIX: 108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


def kernel_manager_class(runtime_dir: str | os.PathLike | None = None):
    """The kernel manager papermill starts each notebook's kernel with. On POSIX it talks to the
    kernel over Unix sockets in Jupyter's runtime folder (``transport="ipc"``): no TCP ports that
    parallel jobs could race for, and no "Kernel is running over TCP without encryption" warning
    on the console. TCP (jupyter_client's default) on Windows, where the runtime folder's path
    would make the socket paths too long (``runtime_dir``: default Jupyter's), or where
    ``BERTOLOGY_KERNEL_TRANSPORT=tcp`` says so (a runtime folder on a file system without Unix
    sockets, e.g. some network or WSL mounts)."""
    from jupyter_client.manager import AsyncKernelManager

    transport = os.environ.get(KERNEL_TRANSPORT_ENV, "ipc").strip().lower() or "ipc"
    if transport not in ("ipc", "tcp"):
        raise ValueError(f"{KERNEL_TRANSPORT_ENV}={transport!r}: use 'ipc' (default) or 'tcp'")
    if os.name != "posix" or transport == "tcp":
        return AsyncKernelManager
    if runtime_dir is None:
        from jupyter_core.paths import jupyter_runtime_dir

        runtime_dir = jupyter_runtime_dir()
    # sockets are <runtime>/kernel-<36-character uuid>-ipc-<n>
    if len(os.fsencode(Path(runtime_dir) / f"kernel-{'0' * 36}-ipc-99999")) > _MAX_SOCKET_PATH:
        return AsyncKernelManager
    return _ipc_manager()


@functools.lru_cache(maxsize=1)
def _ipc_manager():
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        """An AsyncKernelManager whose kernel listens on Unix sockets of its own in Jupyter's runtime
        folder (jupyter_client's default for ipc, ``kernel-ipc-N`` in the working folder, would
        be shared by kernels started side by side)."""
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _unique_socket_prefix(self) -> str:
            folder = jupyter_runtime_dir()
            os.makedirs(folder, mode=0o700, exist_ok=True)
            return os.path.join(folder, f"kernel-{uuid.uuid4()}-ipc")

    return IPCKernelManager


def discover_notebooks(notebook_dir: str | os.PathLike = "notebooks") -> dict[str, Path]:
    """Map both the two-digit prefix ("01") and the full stem ("01_attention_patterns") to paths.

    A prefix shared by two notebooks is left out (ambiguous); their full stems still work.
    """
    paths = sorted(p for p in Path(notebook_dir).glob("*.ipynb") if _NOTEBOOK_RE.match(p.stem))
    found: dict[str, Path] = {p.stem: p for p in paths}
    prefixes: dict[str, list[Path]] = {}
    for p in paths:
        prefixes.setdefault(p.stem[:2], []).append(p)
    for prefix, ps in prefixes.items():
        if len(ps) == 1:
            found.setdefault(prefix, ps[0])
    return found


def resolve_notebooks(selection: Iterable[str] | None, notebook_dir: str | os.PathLike = "notebooks") -> list[Path]:
    """Turn a selection ("01", "1", "01_name", "01_name.ipynb" or a path) into ordered notebook paths.

    ``None`` or empty selects every notebook in the directory, in name order.
    """
    found = discover_notebooks(notebook_dir)
    unique = sorted(set(found.values()))
    if not selection:
        if not unique:
            raise ValueError(f"no notebooks (NN_name.ipynb) found in {notebook_dir}")
        return unique
    chosen: list[Path] = []
    unknown: list[str] = []
    for item in selection:
        key = str(item)
        if key.endswith(".ipynb") and Path(key).is_file():
            path = Path(key)
        else:
            key = Path(key).name.removesuffix(".ipynb")
            if key.isdigit() and len(key) < 2:
                key = key.zfill(2)
            path = found.get(key)
        if path is None:
            unknown.append(str(item))
        elif path not in chosen:
            chosen.append(path)
    if unknown:
        available = ", ".join(p.stem for p in unique) or "(none)"
        raise ValueError(
            f"unknown notebook(s): {', '.join(unknown)}; available in {notebook_dir}: {available}"
        )
    return chosen


def model_slug(model: str) -> str:
    """Filesystem-safe folder name for a model: "org/name" -> "org--name", a local dir -> its last part."""
    name = str(model).strip().replace("\\", "/")
    is_path = name.startswith(("/", ".", "~")) or re.match(r"^[A-Za-z]:/", name) or os.path.isdir(os.path.expanduser(name))
    if is_path:
        slug = Path(name.rstrip("/")).name or "model"
    else:
        slug = name.strip("/").replace("/", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", slug).lstrip(".")  # no hidden dirs, no clash with .staging
    return slug or "model"


# --------------------------------------------------------------------------- run records
@dataclass
class RunRecord:
    notebook: str  # stem, e.g. "01_attention_patterns"
    model: str
    status: str  # "ok" | "failed"
    elapsed: float  # seconds of notebook execution
    started: str  # ISO time with offset
    error: dict | None = None  # cell (1-based in the source notebook), exec_count, source, ename, evalue
    html: str | None = None
    ipynb: str | None = None
    results: str | None = None
    parameters: dict = field(default_factory=dict)
    slug: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe_error(self) -> str:
        return describe_error(self.error)


def describe_error(error: dict | None) -> str:
    if not error:
        return ""
    where = []
    if error.get("cell") is not None:
        where.append(f"cell {error['cell']}")
    if error.get("exec_count") is not None:
        where.append(f"(In [{error['exec_count']}])")
    text = " ".join(where)
    if error.get("source"):
        text += f" `{error['source']}`"
    msg = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".rstrip(": ")
    return f"{text}: {msg}" if text else msg


# --------------------------------------------------------------------------- running
def run_notebook(
    nb_path: str | os.PathLike,
    model: str,
    out: str | os.PathLike = "reports",
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    params: dict | None = None,
    kernel_name: str | None = None,
    update_runs: bool = True,
) -> RunRecord:
    """Execute one notebook for one model; publish it under ``out/<slug>/`` only if it succeeds.

    ``update_runs=False`` leaves ``runs.json`` alone and writes the run record to
    ``out/<slug>/<stem>.run.json`` instead (one file per job, so parallel jobs share no file);
    :func:`merge_job_records` folds those into ``runs.json`` later.
    """
    import papermill as pm

    nb_path = Path(nb_path).resolve()
    stem, slug = nb_path.stem, model_slug(model)
    out = Path(out)
    model_dir = out / slug
    params = dict(params or {})
    clash = sorted(set(params) & set(RESERVED_PARAMS))
    if clash:
        raise ValueError(f"set {', '.join(clash)} with its own option, not as an extra parameter")

    staging_root = out / ".staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    # Staging lives under ``out`` so the final moves are same-filesystem renames.
    stage = Path(tempfile.mkdtemp(prefix=f"{slug}-{stem}-", dir=staging_root))
    stage_out = stage / stem
    stage_out.mkdir()
    stage_nb = stage / f"{stem}.ipynb"
    run_params = {"model": model, "quick": bool(quick), "seed": seed, "device": device, **params}
    record = RunRecord(
        notebook=stem, model=model, status="failed", elapsed=0.0,
        started=datetime.now().astimezone().isoformat(timespec="seconds"),
        parameters={**run_params, "output_dir": str(model_dir / stem)}, slug=slug,
    )
    t0 = time.perf_counter()
    try:
        try:
            pm.execute_notebook(
                str(nb_path), str(stage_nb),
                parameters={**run_params, "output_dir": str(stage_out.resolve())},
                cwd=str(nb_path.parent), kernel_name=kernel_name, kernel_manager_class=kernel_manager_class(),
                progress_bar=sys.stderr.isatty(), log_output=False, request_save_on_cell_execute=False,
            )
            record.elapsed = time.perf_counter() - t0
            results = _read_results(stage_out / "results.json")
            _add_header(stage_nb, record, results.get("meta") or {})
            _to_html(stage_nb, stage / f"{stem}.html")
        except Exception as exc:  # any failure: keep the last good report, save what ran
            record.elapsed = record.elapsed or time.perf_counter() - t0
            record.error = _error_info(exc, stage_nb)
            if stage_nb.exists():
                failed = model_dir / f"{stem}.failed.ipynb"
                os.replace(stage_nb, failed)
                record.ipynb = str(failed)
        else:
            replace_dir(stage_out, model_dir / stem)
            os.replace(stage_nb, model_dir / f"{stem}.ipynb")
            os.replace(stage / f"{stem}.html", model_dir / f"{stem}.html")
            (model_dir / f"{stem}.failed.ipynb").unlink(missing_ok=True)  # stale after a success
            record.status = "ok"
            record.html = str(model_dir / f"{stem}.html")
            record.ipynb = str(model_dir / f"{stem}.ipynb")
            record.results = str(model_dir / stem / "results.json")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging_root.rmdir()  # only succeeds when no other run is staging
    if update_runs:
        _update_runs(out, record)
    else:
        atomic_write_json(_job_record_path(model_dir, stem), _record_json(record, out))
    return record


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def kernel_threads(jobs: int, threads: int | None = None) -> int | None:
    """CPU threads each kernel gets when ``jobs`` notebooks run at once: ``threads`` when given,
    None (torch's own default, every core) for one job or when ``OMP_NUM_THREADS`` is set in the
    environment (the user's choice), else the available cores divided by ``jobs``, at least 1."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        return threads
    if jobs == 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, available_cores() // jobs)


#: Seconds of each shipped notebook's full MiniLM run (README "Speed and memory": AMD EPYC, 2 cores,
#: 2026-12-04, commit dbbbb81): the start order of parallel jobs before a notebook has run here.
#: Only the order depends on them, never a result.
TYPICAL_SECONDS = {"01_attention_patterns": 28, "02_attention_heads_syntax": 137, "03_head_clustering": 25,
                   "04_syntax_probes": 385, "05_semantic_roles": 18, "06_numeracy": 167,
                   "07_world_knowledge": 89, "08_pruning": 143}


def longest_first(notebooks: Iterable[str | os.PathLike], out: str | os.PathLike, model: str) -> list[Path]:
    """``notebooks`` in the order a pool of parallel jobs should start them, longest first (the
    longest-processing-time rule, so the longest notebook never starts last): by the elapsed times
    of their latest runs for ``model`` in ``out/runs.json`` when every one of them has run, else by
    :data:`TYPICAL_SECONDS`; a notebook with no known time goes first. Ties keep the given order."""
    runs, slug = read_runs(out), model_slug(model)
    paths = [Path(nb) for nb in notebooks]

    def seconds(entry) -> float | None:
        elapsed = ((entry or {}).get("latest") or {}).get("elapsed")
        return float(elapsed) if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and elapsed > 0 else None

    own = {p.stem: seconds(runs.get(f"{slug}/{p.stem}")) for p in paths}
    if all(v is not None for v in own.values()):
        known = own
    else:  # a first run for this model: the shipped typical timings
        known = {p.stem: TYPICAL_SECONDS.get(p.stem) for p in paths}

    def cost(path: Path) -> float:
        v = known.get(path.stem)
        return float("inf") if v is None else float(v)

    return sorted(paths, key=cost, reverse=True)  # stable: ties (and unknowns) keep their order


@contextlib.contextmanager
def _thread_env(threads: int | None):
    """``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for the kernels started inside (they inherit the
    environment; torch sizes its intra-op pool from it), restored afterwards."""
    if threads is None:
        yield
        return
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(threads) for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(
    notebooks: Iterable[str | os.PathLike],
    model: str = "minilm",
    out: str | os.PathLike = "reports",
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    params: dict | None = None,
    kernel_name: str | None = None,
    on_start: Callable[[Path], Any] | None = None,
    on_done: Callable[[RunRecord], Any] | None = None,
    update_index: bool = True,
    jobs: int = 1,
    threads: int | None = None,
) -> list[RunRecord]:
    """Run notebooks, carrying on after failures, then rebuild the index; the records come back in
    the order of ``notebooks``.

    ``jobs`` > 1 runs that many notebooks at once, each in a process of its own
    (:func:`run_job_process`), started :func:`longest_first`, each with
    :func:`kernel_threads` CPU threads (the cores divided by ``jobs`` unless ``threads`` or
    ``OMP_NUM_THREADS`` says otherwise). On a CPU this overlaps one notebook's single-threaded
    Python, plotting and rendering with another's matrix products (README "Speed and memory" has
    the measured gain). Every report is the same as from a run of one job with that many threads
    per kernel: the thread count can change the last bits of a sum, so the report header names it.

    ``update_index=False`` (one job of a workflow): neither ``runs.json`` nor ``index.html`` is
    touched; each run leaves its record in ``out/<slug>/<stem>.run.json`` for a final
    ``bertology index`` (:func:`merge_job_records` + :func:`write_index`).
    """
    notebooks = [Path(nb) for nb in notebooks]
    n_threads = kernel_threads(jobs, threads)

    def one(nb: Path) -> RunRecord:
        if on_start:
            on_start(nb)
        if jobs == 1:
            rec = run_notebook(nb, model, out=out, quick=quick, seed=seed, device=device,
                               params=params, kernel_name=kernel_name, update_runs=update_index)
        else:
            rec = run_job_process(nb, model, out=out, quick=quick, seed=seed, device=device, params=params,
                                  kernel_name=kernel_name, threads=n_threads, update_runs=update_index)
        if on_done:
            on_done(rec)
        return rec

    try:
        if jobs == 1:
            with _thread_env(n_threads):
                return [one(nb) for nb in notebooks]
        from concurrent.futures import ThreadPoolExecutor

        # Each thread only waits on its own ``bertology run`` process (one notebook, one kernel).
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bertology-run") as pool:
            rank = {nb: k for k, nb in enumerate(dict.fromkeys(longest_first(notebooks, out, model)))}
            futures = {i: pool.submit(one, notebooks[i]) for i in sorted(range(len(notebooks)),
                                                                         key=lambda i: rank[notebooks[i]])}
            try:
                return [futures[i].result() for i in range(len(notebooks))]
            except BaseException:
                for f in futures.values():
                    f.cancel()  # the ones not started yet; running jobs get the terminal's Ctrl-C themselves
                raise
    finally:
        if update_index:
            write_index(out)  # also after Ctrl-C, so the finished runs are listed


def job_command(
    nb_path: str | os.PathLike,
    model: str,
    out: str | os.PathLike = "reports",
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    params: dict | None = None,
    kernel_name: str | None = None,
    threads: int | None = None,
) -> list[str]:
    """The command line of one parallel job: this Python running ``bertology run --no-index`` on
    one notebook (the same job the Snakemake workflow runs). Extra parameters travel as
    ``-p KEY=JSON``, which :func:`bertology.cli.parse_param` reads back to the same value."""
    params = dict(params or {})
    try:
        encoded = [f"{key}={json.dumps(value)}" for key, value in params.items()]
    except TypeError as exc:
        raise ValueError(f"parameters of parallel jobs must be JSON values: {exc}") from None
    cmd = [sys.executable, "-m", "bertology.cli", "run", "--model", str(model), "--out", str(out),
           "--notebooks", str(Path(nb_path).resolve()), "--seed", str(int(seed)), "--device", str(device),
           "--no-index"]
    if quick:
        cmd.append("--quick")
    if kernel_name:
        cmd += ["--kernel", kernel_name]
    if threads is not None:
        cmd += ["--threads", str(int(threads))]
    for item in encoded:
        cmd += ["-p", item]
    return cmd


def _record_from_json(data: dict, out: Path) -> RunRecord:
    """A :class:`RunRecord` from its ``runs.json`` form (paths relative to ``out``)."""
    fields_ = {k: data.get(k) for k in RunRecord.__dataclass_fields__ if k in data}
    for key in ("html", "ipynb", "results"):
        if fields_.get(key):
            fields_[key] = str(out / fields_[key])
    params = dict(fields_.get("parameters") or {})
    if params.get("output_dir"):
        params["output_dir"] = str(out / params["output_dir"])
    fields_["parameters"] = params
    return RunRecord(**fields_)


def run_job_process(
    nb_path: str | os.PathLike,
    model: str,
    out: str | os.PathLike = "reports",
    quick: bool = False,
    seed: int = 0,
    device: str = "auto",
    params: dict | None = None,
    kernel_name: str | None = None,
    threads: int | None = None,
    update_runs: bool = True,
) -> RunRecord:
    """:func:`run_notebook` in a process of its own (:func:`job_command`), so parallel notebooks
    share no Python process, kernel manager or event loop with each other. ``threads`` sets
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` of that process only. The job leaves its record in
    ``out/<slug>/<stem>.run.json``; with ``update_runs`` it is moved into ``runs.json`` here.
    A job process that dies without a record (killed, out of memory) gives a failed record that
    says how it ended, with the end of what it printed."""
    import subprocess

    nb_path, out = Path(nb_path).resolve(), Path(out)
    stem, slug = nb_path.stem, model_slug(model)
    record_file = _job_record_path(out / slug, stem)
    record_file.unlink(missing_ok=True)  # a stale record must not pass for this run's
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    proc = subprocess.run(job_command(nb_path, model, out=out, quick=quick, seed=seed, device=device,
                                      params=params, kernel_name=kernel_name, threads=threads),
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        record = _record_from_json(json.loads(record_file.read_text(encoding="utf-8")), out)
    except (OSError, ValueError, TypeError):
        tail = (proc.stdout or "").strip().splitlines()[-5:]
        how = (f"was stopped by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited with status {proc.returncode}")
        record = RunRecord(
            notebook=stem, model=model, status="failed", elapsed=time.perf_counter() - t0, started=started,
            error={"ename": "JobError",
                   "evalue": f"the job process {how} without a run record" + (": " + " | ".join(tail) if tail else "")},
            parameters={"model": model, "quick": bool(quick), "seed": seed, "device": device, **dict(params or {}),
                        "output_dir": str(out / slug / stem)},
            slug=slug,
        )
        if not update_runs:
            atomic_write_json(record_file, _record_json(record, out))
    if update_runs:
        _update_runs(out, record)
        record_file.unlink(missing_ok=True)
    return record


class NotebookFailure(Exception):
    """A run that executed without an exception but did not produce a usable report."""


def _read_results(path: Path) -> dict:
    if not path.is_file():
        raise NotebookFailure("notebook wrote no results.json")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise NotebookFailure(f"results.json is not valid JSON: {exc}") from None
    if not isinstance(results, dict):
        raise NotebookFailure("results.json is not a JSON object")
    return results


def _error_info(exc: Exception, executed: Path) -> dict:
    """Where and why a run failed; the cell number counts all cells of the source notebook from 1."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        lines = [ln.strip() for ln in (exc.source or "").splitlines() if ln.strip()]
        return {
            "cell": _source_cell_number(executed, exc.cell_index),
            "exec_count": exc.exec_count,
            "source": lines[0] if lines else "",
            "ename": exc.ename,
            "evalue": exc.evalue,
        }
    ename = "" if isinstance(exc, NotebookFailure) else type(exc).__name__
    return {"cell": None, "exec_count": None, "source": "", "ename": ename or "NotebookFailure",
            "evalue": str(exc)}


def _source_cell_number(executed: Path, cell_index: int) -> int | None:
    """papermill's index counts its injected-parameters cell; undo that to point into the source."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:
        return None
    cells = [c for c in nb.cells if _PAPERMILL_ERROR_TAG not in c.metadata.get("tags", [])]
    injected = sum(1 for c in cells[:cell_index] if "injected-parameters" in c.metadata.get("tags", []))
    return cell_index - injected + 1


# --------------------------------------------------------------------------- header + HTML
def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def format_elapsed(seconds: float | None) -> str:
    """Seconds as people read them: ``"4.2 s"``, ``"3 min 06 s"``, ``"1 h 02 min"``; ``""`` for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _fmt_value(value: Any) -> str:
    if value is None or value == "" or value == {} or value == []:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _md(text: Any) -> str:
    # Values come from notebooks; keep them from being read as markdown or HTML.
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", _fmt_value(text))


def _language(meta: dict) -> str:
    """``Korean (ko), UD Korean GSD`` from a run's ``meta["language"]`` and ``meta["treebank"]``."""
    lang = meta.get("language") or {}
    text = f"{lang.get('name')} ({lang.get('code')})" if isinstance(lang, dict) else str(lang)
    return f"{text}, {meta['treebank']}" if meta.get("treebank") else text


def _threads(meta: dict) -> str:
    """", 2 CPU threads" for a run on the CPU whose results.json names its thread count."""
    n = meta.get("cpu_threads")
    cpu = str(meta.get("device") or "").startswith("cpu")
    return f", {n} CPU thread{'s' if n != 1 else ''}" if cpu and isinstance(n, int) and not isinstance(n, bool) else ""


def header_markdown(record: RunRecord, meta: dict) -> str:
    """The report header: what ran, on what, with which software, and how to read layer-head names."""
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    # Prefer what the kernel reported in results.json; fall back to the runner's environment.
    py = versions.get("python") or platform.python_version()
    torch_v = versions.get("torch") or meta.get("torch_version") or _version("torch")
    tf_v = versions.get("transformers") or meta.get("transformers_version") or _version("transformers")
    pkg_v = (meta.get("version") or meta.get("package_version") or meta.get("bertology_version")
             or versions.get("bertology") or __version__)
    p = record.parameters
    lines = [
        f"# {_md(record.notebook)} — {_md(meta.get('model') or record.model)}",
        "",
        "| | |",
        "|---|---|",
        f"| model | {_md(meta.get('model') or record.model)} (revision {_md(meta.get('model_revision'))}) |",
        f"| data | {_md(meta.get('data'))} |",
        *([f"| language | {_md(_language(meta))} |"] if meta.get("language") else []),
        f"| sizes | {_md(meta.get('sizes'))} |",
        f"| seed | {_md(meta.get('seed', p.get('seed')))} |",
        f"| device | {_md(meta.get('device') or p.get('device'))}{_threads(meta)}"
        f"{'' if meta.get('precision', 'float32') == 'float32' else ', ' + _md(meta['precision']) + ' autocast'} |",
        f"| quick mode | {'yes' if p.get('quick') else 'no'} |",
        f"| size | {_md(meta.get('size') or p.get('size') or 'full')} |",
        f"| software | bertology {_md(pkg_v)}, Python {_md(py)}, torch {_md(torch_v)}, transformers {_md(tf_v)} |",
        f"| run | started {_md(record.started)}, took {_md(format_elapsed(record.elapsed))} |",
        "",
        "Layers and heads are printed 1-indexed as `layer-head` (e.g. `8-10` is the 10th head of "
        "the 8th layer), as the papers write them; code and tables index them from 0.",
        "",
        f"Figures, tables and `results.json` are in the folder `{record.notebook.replace('`', '')}/` next to this "
        "report (the notebook ran in a staging folder and was moved there after it succeeded).",
    ]
    notes = [n for n in (meta.get("notes") or []) if n]
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {_md(n)}" for n in notes]
    deviations = [d for d in (meta.get("deviations") or []) if d]
    if deviations:
        lines += ["", "**Where this run deviates from the paper**", ""] + [f"- {_md(d)}" for d in deviations]
    return "\n".join(lines)


# What a progress bar or widget fallback writes to stderr: tqdm's "12/40 [00:01<00:03, 9.5it/s]",
# its bar "|####  |", ipywidgets' missing-widget warning, transformers' weight-loading bars.
_PROGRESS_LINE = re.compile(
    r"(it/s\]|s/it\]|\d+it \[|\d+/\d+ \[\d|\|[\u2588-\u258f#\s]*\||IProgress not found|"
    r"ipywidgets\.readthedocs|from \.autonotebook import tqdm|Loading (checkpoint shards|weights)|^\s*warnings\.warn\()")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_MAX_MESSAGES, _MAX_MESSAGE_CHARS = 12, 400


def clean_outputs(nb) -> list[str]:
    """Take progress bars, widget placeholders and stderr out of an executed notebook, in place.

    Returns the stderr lines that are not progress (warnings a reader should see), each once, in
    the order they first appeared, for the report header. The notebook's own output (stdout,
    figures, tables) is left as it is."""
    messages: list[str] = []
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                for line in re.split(r"[\r\n]+", out.get("text", "")):
                    line = line.strip()
                    if line and not _PROGRESS_LINE.search(line):
                        line = re.sub(r"^\S+\.py:\d+: ", "", line)[:_MAX_MESSAGE_CHARS]
                        if line not in messages:
                            messages.append(line)
                continue
            if out.get("output_type") in ("display_data", "execute_result") and _WIDGET_MIME in out.get("data", {}):
                continue
            kept.append(out)
        cell["outputs"] = kept
    if len(messages) > _MAX_MESSAGES:
        rest = len(messages) - _MAX_MESSAGES
        messages = messages[:_MAX_MESSAGES] + [f"... and {rest} more lines"]
    return messages


def _add_header(nb_file: Path, record: RunRecord, meta: dict) -> None:
    import nbformat

    nb = nbformat.read(str(nb_file), as_version=4)
    nb.cells = [c for c in nb.cells if HEADER_TAG not in c.metadata.get("tags", [])]
    messages = clean_outputs(nb)
    if messages:
        meta = {**meta, "notes": [*(meta.get("notes") or []),
                                  "The run printed (moved here from the cells): " + " / ".join(messages)]}
    cell = nbformat.v4.new_markdown_cell(header_markdown(record, meta), metadata={"tags": [HEADER_TAG]})
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        cell.pop("id", None)  # cell ids are invalid before nbformat 4.5
    nb.cells.insert(0, cell)
    nbformat.write(nb, str(nb_file))


# nbconvert's lab template loads require.js, MathJax, mermaid and the widget manager from CDNs;
# a report must render with no network, so those blocks are emptied. Our notebooks use no math,
# no mermaid and no widgets. CSS and images are inlined by nbconvert.
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
# a tag that loads something from the network: <script src=http...>, <link href=http...>, <img src=//...>
EXTERNAL_LOAD_RE = re.compile(
    r"<(?:script|link|img|iframe|source|video|audio|embed)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//",
    re.IGNORECASE,
)


def html_exporter():
    """An ``HTMLExporter`` (lab template) whose output loads nothing from the network."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="lab",
        template_file="bertology_offline.html.j2",
        extra_loaders=[DictLoader({"bertology_offline.html.j2": _OFFLINE_TEMPLATE})],
        embed_images=True,  # markdown images too (output images are inlined anyway)
    )


def external_loads(page: str) -> list[str]:
    """The tags of an HTML page that would load a resource from the network (empty when self-contained)."""
    return [m.group(0) for m in EXTERNAL_LOAD_RE.finditer(page)]


def _to_html(nb_file: Path, html_file: Path) -> None:
    import nbformat

    nb = nbformat.read(str(nb_file), as_version=4)
    body, _ = html_exporter().from_notebook_node(nb)
    html_file.write_text(body, encoding="utf-8")


# --------------------------------------------------------------------------- run log
@contextlib.contextmanager
def _locked(path: Path):
    """Serialize read-modify-write of runs.json between concurrent runners (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: best effort
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _record_json(record: RunRecord, out: Path) -> dict:
    data = asdict(record)

    def rel(path: str) -> str:  # relative to ``out``, so the reports folder can move as a whole
        return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()

    for key in ("html", "ipynb", "results"):
        if data[key]:
            data[key] = rel(data[key])
    if data["parameters"].get("output_dir"):
        data["parameters"]["output_dir"] = rel(data["parameters"]["output_dir"])
    data["elapsed"] = round(record.elapsed, 3)
    return data


def read_runs(out: str | os.PathLike = "reports") -> dict:
    path = Path(out) / "runs.json"
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return runs if isinstance(runs, dict) else {}


def _update_runs(out: Path, record: RunRecord) -> None:
    with _locked(out / ".runs.lock"):
        runs = read_runs(out)
        _add_entry(runs, _record_json(record, out))
        atomic_write_json(out / "runs.json", dict(sorted(runs.items())))


def _add_entry(runs: dict, entry: dict) -> None:
    key = f"{entry['slug']}/{entry['notebook']}"
    prev = runs.get(key) or {}
    runs[key] = {"latest": entry, "last_good": entry if entry.get("status") == "ok" else prev.get("last_good")}


def _job_record_path(model_dir: Path, stem: str) -> Path:
    return model_dir / f"{stem}.run.json"


def _when(started: str | None) -> float:
    try:
        return datetime.fromisoformat(str(started)).timestamp()
    except ValueError:
        return float("-inf")


def merge_job_records(out: str | os.PathLike = "reports") -> int:
    """Move the per-job run records (``out/<slug>/<stem>.run.json``) into ``runs.json``.

    Records are applied oldest first, a record older than the run already listed for its
    notebook is dropped, and each file is deleted once merged, so merging twice changes nothing. Returns how many records were merged. A record that is not valid JSON (or
    lacks ``slug``/``notebook``) raises ``ValueError`` naming the file, and nothing is merged.
    """
    out = Path(out)
    files = sorted(out.glob("*/*.run.json"))
    files = [f for f in files if not f.parent.name.startswith(".")]
    if not files:
        return 0
    with _locked(out / ".runs.lock"):
        entries = []
        for f in files:
            try:
                entry = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"{f}: not a readable run record ({exc})") from None
            if not isinstance(entry, dict) or not entry.get("slug") or not entry.get("notebook"):
                raise ValueError(f"{f}: a run record needs 'slug' and 'notebook'")
            entries.append((str(entry.get("started", "")), str(f), entry))
        runs = read_runs(out)
        for started, _, entry in sorted(entries, key=lambda e: e[:2]):
            latest = (runs.get(f"{entry['slug']}/{entry['notebook']}") or {}).get("latest") or {}
            if _when(started) >= _when(latest.get("started")):  # never undo a newer run
                _add_entry(runs, entry)
        atomic_write_json(out / "runs.json", dict(sorted(runs.items())))
        for f in files:
            f.unlink(missing_ok=True)
    return len(files)


# --------------------------------------------------------------------------- index page
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
padding:0 1rem;color:#1f2328;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.sub{color:#59636e;margin-top:0}table{border-collapse:collapse;width:100%;margin-top:.5rem}
th,td{text-align:left;vertical-align:top;padding:.45rem .6rem;border-bottom:1px solid #e5e7eb}
th{background:#f6f8fa;font-weight:600}td.num{white-space:nowrap}a{color:#0969da;text-decoration:none}
a:hover{text-decoration:underline}.ok{color:#1a7f37;font-weight:600}.failed{color:#cf222e;font-weight:600}
.err{color:#59636e;font-size:.9em;display:block;max-width:28rem;overflow-wrap:anywhere}
.links a{margin-right:.6rem;white-space:nowrap}img.thumb{max-width:160px;max-height:110px;border:1px solid #d0d7de}
code{font-size:.9em}
"""


def _href(rel: str) -> str:
    return html.escape(quote(rel), quote=True)


def _link(out: Path, rel: str, label: str) -> str:
    return f'<a href="{_href(rel)}">{html.escape(label)}</a>' if (out / rel).exists() else ""


def _data_summary(results_file: Path) -> str:
    try:
        meta = json.loads(results_file.read_text(encoding="utf-8")).get("meta") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    parts = [_fmt_value(meta.get("data"))] if meta.get("data") else []
    if meta.get("sizes"):
        parts.append(_fmt_value(meta["sizes"]))
    return "; ".join(parts)


def _results(results_file: Path) -> dict:
    try:
        doc = json.loads(results_file.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def comparison_table(out: Path) -> pd.DataFrame:
    """Key numbers (``values.key_numbers`` of each results.json) side by side: one row per
    notebook and number, one column per model; a run at another size than full, or in quick
    mode, is a column of its own, named so (``"m (laptop)"``): its numbers are not the full run's."""
    rows = {}
    for slug, stems in _index_rows(out).items():
        for stem in stems:
            doc = _results(out / slug / stem / "results.json")
            meta = doc.get("meta") or {}
            size = meta.get("size") or "full"
            tags = (["quick"] if meta.get("quick") else []) + ([size] if size != "full" else [])
            model = meta.get("model", slug) + (f" ({', '.join(tags)})" if tags else "")
            for name, value in ((doc.get("values") or {}).get("key_numbers") or {}).items():
                rows.setdefault((stem, name), {})[model] = value
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["notebook", "number"])
    return table.sort_index(level=0, sort_remaining=False)


def language_comparison(out: Path) -> dict[str, pd.DataFrame]:
    """Runs on different languages side by side (from each report's ``results.json``).

    ``relations``: per relation found in the notebook-02 runs of *every* language present, each
    run's best head (its ``layer-head`` label) and accuracy (``relation, language, model, label, accuracy, n``;
    results written before the columns were renamed, with ``head`` for the label and ``count``, are read too);
    ``uuas``: the notebook-04 structural probe's UUAS by layer of each run (``language, model,
    layer, uuas``), the random-init control left out. Runs whose treebank has no language recorded
    are skipped; both tables are empty unless at least two languages are present.
    """
    rel_rows, uuas_rows = [], []
    for slug, stems in _index_rows(out).items():
        for stem in stems:
            doc = _results(out / slug / stem / "results.json")
            meta, tables = doc.get("meta") or {}, doc.get("tables") or {}
            lang = meta.get("language")
            if not isinstance(lang, dict) or not lang.get("code"):
                continue
            language, model = f"{lang.get('name') or lang['code']} ({lang['code']})", meta.get("model", slug)
            if stem.startswith("02"):
                for r in tables.get("relation_heads_best") or []:
                    rel_rows.append((r["relation"], language, model, r["label"] if "label" in r else r["head"],
                                     r["accuracy"], r["n"] if "n" in r else r["count"]))
            if stem.startswith("04"):
                for r in tables.get("structural_probe") or []:
                    if r.get("metric") == "uuas" and r.get("model") == model:
                        uuas_rows.append((language, model, int(r["layer"]), r["value"]))
    rel = pd.DataFrame(rel_rows, columns=["relation", "language", "model", "label", "accuracy", "n"])
    uuas = pd.DataFrame(uuas_rows, columns=["language", "model", "layer", "uuas"])
    if rel.language.nunique() >= 2:
        per_lang = rel.groupby("relation")["language"].nunique()
        shared = per_lang[per_lang == rel.language.nunique()].index
        rel = rel[rel.relation.isin(shared)].sort_values(["relation", "language", "model"]).reset_index(drop=True)
    else:
        rel = rel.iloc[0:0]
    if uuas.language.nunique() < 2:
        uuas = uuas.iloc[0:0]
    return {"relations": rel, "uuas": uuas.sort_values(["language", "model", "layer"]).reset_index(drop=True)}


def _language_section(out: Path) -> str:
    esc = html.escape
    comp = language_comparison(out)
    parts = []
    rel, uuas = comp["relations"], comp["uuas"]
    if len(rel):
        rel = rel.assign(run=rel.language + " · " + rel.model)
        runs = sorted(rel.run.unique())
        cell = {(r.relation, r.run): f"{r.label}: {r.accuracy:.3f}" for r in rel.itertuples()}
        rows = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td class=num>{esc(cell.get((k, c), ''))}</td>" for c in runs)
                       + "</tr>" for k in sorted(rel.relation.unique(), key=lambda x: (x != "all", x)))
        parts.append("<h3>Best head per shared relation (notebook 02; head: accuracy)</h3>\n<table><thead><tr>"
                     "<th>Relation</th>" + "".join(f"<th>{esc(c)}</th>" for c in runs) + f"</tr></thead><tbody>{rows}</tbody></table>")
    if len(uuas):
        uuas = uuas.assign(run=uuas.language + " · " + uuas.model)
        runs = sorted(uuas.run.unique())
        cell = {(r.layer, r.run): f"{r.uuas:.3f}" for r in uuas.itertuples()}
        rows = "".join(f"<tr><td>{k}</td>" + "".join(f"<td class=num>{cell.get((k, c), '')}</td>" for c in runs) + "</tr>"
                       for k in sorted(uuas.layer.unique()))
        parts.append("<h3>Structural probe UUAS by layer (notebook 04)</h3>\n<table><thead><tr><th>Layer</th>"
                     + "".join(f"<th>{esc(c)}</th>" for c in runs) + f"</tr></thead><tbody>{rows}</tbody></table>")
    return "<h2>Languages side by side</h2>\n" + "\n".join(parts) if parts else ""


def _index_rows(out: Path) -> dict[str, dict[str, dict]]:
    """model slug -> stem -> {"latest", "last_good"}; reports on disk without a run record count too."""
    models: dict[str, dict[str, dict]] = {}
    for key, entry in read_runs(out).items():
        if isinstance(entry, dict) and "/" in key:
            slug, stem = key.split("/", 1)
            models.setdefault(slug, {})[stem] = entry
    for html_file in out.glob("*/*.html"):
        slug, stem = html_file.parent.name, html_file.stem
        if not slug.startswith(".") and stem not in models.get(slug, {}):
            models.setdefault(slug, {})[stem] = {"latest": None, "last_good": None}
    return models


def write_index(out: str | os.PathLike = "reports") -> Path:
    """Write ``out/index.html``: one table per model with status, timing, data, links and a thumbnail."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    sections = []
    for slug, stems in sorted(_index_rows(out).items()):
        rows = []
        for stem, entry in sorted(stems.items()):
            latest, good = entry.get("latest") or {}, entry.get("last_good") or {}
            status = latest.get("status") or ("ok" if (out / slug / f"{stem}.html").exists() else "unknown")
            status_html = f'<span class="{esc(status)}">{esc(status)}</span>'
            if status == "failed":
                status_html += f'<span class="err">{esc(describe_error(latest.get("error")))}</span>'
                if good:
                    status_html += f'<span class="err">showing the last good run ({esc(good.get("started", ""))})</span>'
            shown = good if status == "failed" else latest
            links = [
                _link(out, f"{slug}/{stem}.html", "HTML"),
                _link(out, f"{slug}/{stem}.ipynb", "ipynb"),
                _link(out, f"{slug}/{stem}/results.json", "results.json"),
                _link(out, f"{slug}/{stem}/figures", "figures"),
                _link(out, f"{slug}/{stem}.failed.ipynb", "failed ipynb"),
            ]
            pngs = sorted((out / slug / stem / "figures").glob("*.png"))
            key_fig = (_results(out / slug / stem / "results.json").get("meta") or {}).get("key_figure")
            pngs = [p for p in pngs if p.stem == key_fig] or pngs  # the report's key figure first
            thumb = ""
            if pngs:
                rel = f"{slug}/{stem}/figures/{pngs[0].name}"
                thumb = f'<a href="{_href(rel)}"><img class="thumb" src="{_href(rel)}" alt="{esc(pngs[0].stem)}" loading="lazy"></a>'
            name = _link(out, f"{slug}/{stem}.html", stem) or esc(stem)
            rows.append(
                "<tr>"
                f"<td>{name}</td><td>{status_html}</td>"
                f"<td class=num>{esc(str(latest.get('started', '')).replace('T', ' '))}</td>"
                f"<td class=num>{esc(format_elapsed(latest.get('elapsed')))}</td>"
                f"<td>{esc(_data_summary(out / slug / stem / 'results.json'))}</td>"
                f'<td class="links">{" ".join(l for l in links if l)}</td>'
                f"<td>{thumb}</td></tr>"
            )
        model_names = {e["latest"]["model"] for e in stems.values() if e.get("latest") and e["latest"].get("model")}
        title = esc(", ".join(sorted(model_names)) or slug)
        sections.append(
            f"<h2>{title}</h2>\n<table><thead><tr><th>Notebook</th><th>Status</th><th>Started</th>"
            "<th>Elapsed</th><th>Data</th><th>Files</th><th>Figure</th></tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table>"
        )
    compare = comparison_table(out)
    if compare.shape[1] >= 2:  # several models: their headline numbers side by side
        head = "".join(f"<th>{esc(str(c))}</th>" for c in compare.columns)
        body_rows = "".join(
            f"<tr><td>{esc(nb)}</td><td>{esc(name)}</td>"
            + "".join(f"<td class=num>{'' if pd.isna(v) else f'{v:.3f}'}</td>" for v in vals) + "</tr>"
            for (nb, name), vals in zip(compare.index, compare.to_numpy())
        )
        sections.insert(0, "<h2>Models side by side</h2>\n<table><thead><tr><th>Notebook</th><th>Key number</th>"
                        f"{head}</tr></thead><tbody>{body_rows}</tbody></table>")
    languages = _language_section(out)
    if languages:
        sections.insert(0, languages)
    body = "\n".join(sections) or "<p>No reports yet. Run <code>bertology run</code>.</p>"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bertology reports</title><style>{_CSS}</style></head><body>\n"
        "<h1>bertology reports</h1>\n"
        f'<p class="sub">Index written {esc(datetime.now().astimezone().isoformat(timespec="seconds"))} '
        f"by bertology {esc(__version__)}. Layers and heads are printed 1-indexed as layer-head.</p>\n"
        f"{body}\n</body></html>\n"
    )
    return atomic_write_text(out / "index.html", page)
