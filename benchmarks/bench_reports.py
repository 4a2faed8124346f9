"""What a full report run costs, per notebook: seconds, peak memory, and where the time goes.

    python benchmarks/bench_reports.py                       # MiniLM and a bert-base-shaped model, full size
    python benchmarks/bench_reports.py --quick --models bert-base --notebooks 01 08
    python benchmarks/bench_reports.py --models bert-base --precision bfloat16 --limit 1800
    python benchmarks/bench_reports.py --models bert-base --size laptop --jobs 2 --cold

``bert-base`` is built here, not downloaded: ``BertForMaskedLM(BertConfig())`` (12 layers x 12
heads x 768, random weights) with the uncased WordPiece vocabulary that MiniLM ships (BERT's
30,522 pieces), saved with ``save_pretrained`` into ``--work``. Its weights are noise, so its
numbers are costs only: a real ``bert-base-uncased`` runs the same operations.

Each notebook runs as ``bertology run`` in a child process (cold Python, warm feature cache
unless ``--cold``). Printed per notebook: wall seconds, peak resident memory of the child and
its kernel (``wait4``), and the shares of the time spent in the engine's forward passes and in
probe training (``bertology.profiling``; the rest is Python, data, plots and rendering).
The table is also written as CSV next to the reports.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bert_base(work: Path) -> Path:
    """A bert-base-shaped random checkpoint with the uncased BERT vocabulary, built once."""
    out = work / "bert-base-random"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from bertology.models import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def notebooks() -> list[str]:
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_one(model: str, nb: str, out: Path, quick: bool, timings: Path, extra: list[str],
            limit: float | None = None, threads: int | None = None) -> dict:
    env = {**os.environ, "BERTOLOGY_TIMINGS": str(timings)}
    if threads is not None:  # what `bertology run --jobs` gives each kernel
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "bertology.cli", "run", "--model", model, "--notebooks", nb[:2], "--out", str(out),
           *(["--quick"] if quick else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    timer = None
    if limit:  # a notebook over the limit is stopped (with its kernel) and reported as "timeout"
        import signal
        import threading

        timer = threading.Timer(limit, lambda: os.killpg(proc.pid, signal.SIGTERM))
        timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    timed_out = bool(timer and not timer.is_alive() and wall >= limit)
    if timer:
        timer.cancel()
    err = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    split = json.loads(timings.read_text()) if timings.exists() else {}
    fwd = split.get("forward", {}).get("seconds", 0.0)
    train = split.get("train", {}).get("seconds", 0.0)
    status = "ok" if proc.returncode == 0 else "timeout" if timed_out else "failed"
    return {"notebook": nb, "status": status, "seconds": round(wall, 1),
            # ru_maxrss is in KiB on Linux; it covers the child and the kernel it waited for
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
            "forward_share": round(fwd / wall, 3), "train_share": round(train / wall, 3),
            "rest_share": round(max(0.0, 1 - (fwd + train) / wall), 3),
            "error": "" if proc.returncode == 0 else (err.strip().splitlines() or [""])[-1][:200]}


def main(argv=None) -> int:
    from bertology.sizes import SIZES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,bert-base", help="comma-separated: minilm, bert-base, or paths/ids")
    ap.add_argument("--notebooks", nargs="*", default=None, help="e.g. 01 04 (default: all)")
    ap.add_argument("--quick", action="store_true", help="quick sizes instead of the full defaults")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bertology-bench")
    ap.add_argument("--cold", action="store_true", help="empty feature cache for each model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--size", default="full", choices=SIZES,
                    help="sample sizes of the notebooks (bertology.sizes): full defaults, or the laptop caps")
    ap.add_argument("--limit", type=float, default=None, help="seconds per notebook before it is stopped")
    ap.add_argument("--jobs", type=int, default=1,
                    help="notebooks at once, as `bertology run --jobs` (longest first: the last bench runs, else typical times; "
                         "each with cores / JOBS threads); the model's total is then the wall time")
    args = ap.parse_args(argv)

    import pandas as pd

    args.work.mkdir(parents=True, exist_ok=True)
    wanted = notebooks() if not args.notebooks else [n for n in notebooks() if n[:2] in {x[:2] for x in args.notebooks}]
    from concurrent.futures import ThreadPoolExecutor

    from bertology.report import kernel_threads, longest_first

    threads = kernel_threads(args.jobs)
    rows, walls = [], {}
    for name in args.models.split(","):
        model = str(bert_base(args.work)) if name == "bert-base" else name
        if args.cold:
            cache = args.work / f"cache-{name}"
            shutil.rmtree(cache, ignore_errors=True)
            os.environ["BERTOLOGY_CACHE"] = str(cache)

        def bench(nb: str, name=name, model=model) -> dict:
            timings = args.work / f"timings-{name}-{nb[:2]}.json"
            timings.unlink(missing_ok=True)
            row = {"model": name, "precision": args.precision, "size": args.size, "jobs": args.jobs,
                   **run_one(model, nb, args.work / "reports", args.quick, timings,
                             ["--device", args.device, "--precision", args.precision, "--size", args.size],
                             args.limit, threads)}
            print(f"{name:10s} {nb:28s} {row['status']:6s} {row['seconds']:8.1f} s  {row['peak_rss_gb']:5.2f} GB  "
                  f"forward {row['forward_share']:5.1%}  train {row['train_share']:5.1%}", flush=True)
            return row

        order = [p.stem for p in longest_first([Path(nb) for nb in wanted], args.work / "reports", model)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = {nb: pool.submit(bench, nb) for nb in order}
            rows += [done[nb].result() for nb in wanted]
        walls[name] = round(time.perf_counter() - t0, 1)
    table = pd.DataFrame(rows)
    table.to_csv(args.work / "bench_reports.csv", index=False)
    print()
    print(table.drop(columns="error").to_string(index=False))
    print()
    total = table.groupby("model", sort=False)[["seconds"]].sum().rename(columns={"seconds": "notebook_seconds"})
    total["wall_seconds"] = pd.Series(walls)
    total["wall_minutes"] = (total["wall_seconds"] / 60).round(1)
    print(f"jobs {args.jobs}, threads per kernel {threads or 'torch default'}")
    print(total.to_string())
    return int((table.status != "ok").any())


if __name__ == "__main__":
    raise SystemExit(main())
