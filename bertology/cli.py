"""``bertology`` command line: run the notebooks into reports, rebuild the index, list notebooks."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .sizes import SIZES
from .workflow import default_notebook_dir  # noqa: F401 - part of the command line's API


def parse_param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (3, 0.5, true, [1,2]), else as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"parameter name {key!r} is not a valid Python identifier")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _display(path: str | os.PathLike | None) -> str:
    if not path:
        return ""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # other drive on Windows
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _cpu_advice(model: str, device: str, size: str, quick: bool, cores: int) -> str | None:
    """:func:`bertology.sizes.cpu_advice` for a run's model, read without the network (None where it cannot be)."""
    from .sizes import cpu_advice, may_advise

    if not may_advise(size, quick, cores) or not (device == "auto" or device.startswith("cpu")):
        return None  # cheap checks first: the config and torch only where the note can show
    from .models import local_config, resolve_device

    try:
        config, dev = local_config(model), resolve_device(device)
    except Exception:  # noqa: BLE001 - the run itself reports a bad model or device
        return None
    layers, width = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(width, int)):
        return None
    return cpu_advice(layers, width, dev.type, size, quick, cores)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertology", description="Run the BERTology notebooks for a model and publish HTML reports."
    )
    parser.add_argument("--version", action="version", version=f"bertology {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,index,list,workflow,deviations,fit-readout}")

    p_run = sub.add_parser("run", help="execute notebooks with papermill and write reports")
    p_run.add_argument("--model", default="minilm", help="model name, hub id or local directory (default: minilm)")
    p_run.add_argument("--notebooks", nargs="+", metavar="NB",
                       help="notebooks by prefix (01) or stem (01_name); default: all")
    p_run.add_argument("--quick", action="store_true", help="small data sizes for a fast smoke run")
    p_run.add_argument("--out", default="reports", help="reports folder (default: reports)")
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    p_run.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default=None,
                       help="compute precision of the forward passes (default float32, as the authors); "
                            "bfloat16 is about 3x faster on CPUs with AMX, float16 is CUDA only; "
                            "a deviation in the report header")
    p_run.add_argument("--size", choices=SIZES, default=None,
                       help="sample sizes: full (default, the notebooks' own) or laptop (capped to about a quarter of the "
                            "work, for bert-base-sized models on a CPU; each report lists what was capped)")
    p_run.add_argument("-p", "--param", dest="params", action="append", type=parse_param, default=[],
                       metavar="KEY=VALUE", help="extra notebook parameter; VALUE parsed as JSON if possible")
    p_run.add_argument("--notebook-dir", type=Path, default=None,
                       help="folder of NN_name.ipynb notebooks (default: the repo's notebooks/)")
    p_run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    p_run.add_argument("-j", "--jobs", type=_positive, default=1,
                       help="notebooks run at once (default 1), each in a process of its own, longest first; each gets the CPU cores "
                            "divided by JOBS as threads unless --threads or OMP_NUM_THREADS says otherwise")
    p_run.add_argument("--threads", type=_positive, default=None,
                       help="CPU threads per kernel (default: torch's own for one job, cores / JOBS for more)")
    p_run.add_argument("--no-index", action="store_true",
                       help="leave runs.json and index.html alone; write each run record to "
                            "<out>/<model>/<notebook>.run.json (for parallel workflow jobs; "
                            "`bertology index` merges them)")

    p_index = sub.add_parser("index", help="merge job run records into runs.json, rebuild <out>/index.html")
    p_index.add_argument("--out", default="reports")

    p_wf = sub.add_parser(
        "workflow", help="run the model x notebook matrix of a YAML config with Snakemake (see docs/workflow.md)",
        description="Run every (model, notebook) of a YAML config as one Snakemake job, then rebuild the "
                    "index. Arguments after `--` go to snakemake unchanged, e.g. `-- --cores 4`, "
                    "`-- --dry-run`, `-- --executor slurm --jobs 50`.")
    p_wf.add_argument("--config", dest="models", default="models.yaml", type=Path,
                      help="the models file (default: models.yaml)")
    p_wf.add_argument("--out", default=None, help="reports folder (default: the config's `out`, else reports)")
    p_wf.add_argument("--write", metavar="DIR", type=Path, default=None,
                      help="write the Snakefile, an example models.yaml and a Slurm profile to DIR and stop")
    p_wf.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then arguments for snakemake")

    p_list = sub.add_parser("list", help="list the available notebooks")
    p_list.add_argument("--notebook-dir", type=Path, default=None)

    p_dev = sub.add_parser("deviations", help="every declared deviation from the authors' definitions (Markdown)")
    p_dev.add_argument("--study", default=None, help="only this study (e.g. clark.relations)")

    p_fit = sub.add_parser("fit-readout", help="fit per-layer MLM readout heads (for models without an MLM head)")
    p_fit.add_argument("--model", default="minilm")
    p_fit.add_argument("--layers", default="all", help="'all' or comma-separated layers, 0 = embeddings")
    p_fit.add_argument("--out", default=None, help="folder (default: the heads shipped in bertology/data/readouts)")
    p_fit.add_argument("--device", default="auto")
    p_fit.add_argument("--n-sentences", type=int, default=None, help="training sentences (default 4000)")
    p_fit.add_argument("--epochs", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

    if args.command == "deviations":
        from . import fidelity

        print(fidelity.markdown(args.study))
        return 0

    if args.command == "workflow":
        from . import workflow

        if args.write is not None:
            for path in workflow.write_files(args.write):
                print(_display(path))
            return 0
        extra = list(args.snakemake_args)
        if extra[:1] == ["--"]:
            extra = extra[1:]
        try:
            cmd = workflow.snakemake_command(args.models, out=args.out, extra=extra)
        except workflow.WorkflowConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        import subprocess

        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        return subprocess.call(cmd)

    if args.command == "fit-readout":
        from .readout import fit_command

        fit_command(args.model, args.layers, args.out, args.device, args.n_sentences, args.epochs)
        return 0

    from . import report  # papermill/nbconvert load only when needed

    if args.command == "index":
        try:
            report.merge_job_records(args.out)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(_display(report.write_index(args.out)))
        return 0

    nb_dir = args.notebook_dir or default_notebook_dir()
    if args.command == "list":
        found = report.discover_notebooks(nb_dir)
        paths = sorted(set(found.values()))
        if not paths:
            print(f"no notebooks in {_display(nb_dir)}", file=sys.stderr)
            return 1
        for path in paths:
            print(f"{path.stem[:2]}  {path.stem:<36} {_display(path)}")
        return 0

    # run
    params = dict(args.params)
    if args.precision is not None:
        params["precision"] = args.precision
    if args.size is not None:
        if "size" in params and params["size"] != args.size:
            parser.error(f"--size {args.size} and -p size={params['size']} disagree: give one")
        params["size"] = args.size
    if "size" in params and params["size"] not in SIZES:
        parser.error(f"-p size={params['size']}: choose one of {', '.join(SIZES)}")
    clash = sorted(set(params) & set(report.RESERVED_PARAMS))
    if clash:
        parser.error(f"-p {clash[0]}=...: use the --{clash[0].replace('_', '-')} option instead"
                     if clash[0] != "output_dir" else "-p output_dir=...: use --out instead")
    try:
        notebooks = report.resolve_notebooks(args.notebooks, nb_dir)
    except ValueError as exc:
        parser.error(str(exc))

    precision = params.get("precision", "float32")
    if precision != "float32":  # before any notebook starts: a precision slower than float32 here is refused
        from .models import check_precision_speed

        try:
            check_precision_speed(precision, args.device)
        except ValueError as exc:
            parser.error(str(exc))

    if not args.no_index:  # a large model on a small CPU at full size: say --size laptop exists (not in workflow jobs)
        advice = _cpu_advice(args.model, args.device, params.get("size", "full"), args.quick, report.available_cores())
        if advice:
            print(advice, file=sys.stderr, flush=True)

    width = max(len(p.stem) for p in notebooks)

    def on_start(path: Path) -> None:
        sys.stderr.write(f"running {path.stem} (model {args.model}) ...\n")  # one write: jobs print from threads
        sys.stderr.flush()

    def on_done(rec: report.RunRecord) -> None:
        path = rec.html if rec.ok else rec.ipynb
        sys.stdout.write(f"{rec.status:<6} {rec.notebook:<{width}} {report.format_elapsed(rec.elapsed):>12}  {_display(path)}\n")
        sys.stdout.flush()

    records = report.run(notebooks, model=args.model, out=args.out, quick=args.quick, seed=args.seed,
                         device=args.device, params=params, kernel_name=args.kernel,
                         on_start=on_start, on_done=on_done, update_index=not args.no_index,
                         jobs=args.jobs, threads=args.threads)
    if not args.no_index:
        print(f"index: {_display(Path(args.out) / 'index.html')}")
    failed = [r for r in records if not r.ok]
    for rec in failed:
        where = f" (executed notebook: {_display(rec.ipynb)})" if rec.ipynb else ""
        print(f"FAILED {rec.notebook}: {rec.describe_error()}{where}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
