"""Benchmark: extraction + word-level reduction vs the raw forward pass and a naive loop.

Prints, for the same sentences in one run:
  * throughput of bertology's extract() with word-level maps streamed into the attention-pattern
    reducer, as a ratio to the raw batched forward pass (goal >= 0.8);
  * the same pipeline against a naive loop -- one sentence per forward pass, word-level maps and
    per-head statistics built with Python loops, the way the original analysis code does it
    (goal >= 3x);
  * peak resident memory of each mode (each runs in its own process), and of extract() on twice
    the sentences, to show that streaming keeps memory flat.

Usage:  python benchmarks/bench_extract.py [--model minilm] [--n 400] [--data auto] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def load_inputs(data: str, n: int):
    from bertology.data import DataUnavailableError, load_treebank

    try:
        sents = load_treebank("ewt" if data == "auto" else data, "dev")
    except DataUnavailableError:
        sents = load_treebank("sample", "dev")
    sents = [s for s in sents if s.n >= 3]
    reps = -(-n // len(sents))
    return [s.words for s in (sents * reps)[:n]]


def mode_raw(loaded, words, batch_size):
    import torch

    from bertology.extract import collate, encode_inputs, length_buckets

    encs = encode_inputs(loaded.tokenizer, words, loaded.info.max_length)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in length_buckets(encs, batch_size):
            out = loaded.model(**collate([encs[i] for i in batch], loaded.device), output_attentions=True)
            torch.stack(out.attentions, 1).float().cpu()  # same device->host copy as the pipeline
    return time.perf_counter() - t0


def mode_extract(loaded, words, batch_size):
    from bertology.attention import AttentionPatterns
    from bertology.extract import encode_inputs, extract

    encs = encode_inputs(loaded.tokenizer, words, loaded.info.max_length)
    t0 = time.perf_counter()
    red = AttentionPatterns(loaded.info.n_layers, loaded.info.n_heads)
    extract(loaded, encs, red, level="word", batch_size=batch_size, progress=False)
    red.result()
    return time.perf_counter() - t0


def mode_naive(loaded, words, batch_size):
    """One sentence at a time; word-level maps and statistics in Python loops over heads."""
    import torch

    from bertology.extract import collate, encode_inputs

    encs = encode_inputs(loaded.tokenizer, words, loaded.info.max_length)
    t0 = time.perf_counter()
    L, H = loaded.info.n_layers, loaded.info.n_heads
    sums = np.zeros((L, H, 4))
    for e in encs:
        with torch.no_grad():
            out = loaded.model(**collate([e], loaded.device), output_attentions=True)
        att = [a[0].cpu().numpy() for a in out.attentions]
        groups = [list(np.flatnonzero(e.unit_of_token == u)) for u in range(e.n_units)]
        for layer in range(L):
            for head in range(H):
                a = att[layer][head]
                cols = np.stack([a[:, g].sum(1) for g in groups], 1)  # to a word: sum of pieces
                w = np.stack([cols[g].mean(0) for g in groups], 0)  # from a word: mean of pieces
                for i in range(len(groups)):
                    sums[layer, head, 0] += w[i, 0]
                    sums[layer, head, 1] += w[i, -1]
                    if i > 0:
                        sums[layer, head, 2] += w[i, i - 1]
                    sums[layer, head, 3] += -np.sum(w[i] * np.log(w[i] + 1e-12))
    return time.perf_counter() - t0


def worker(args):
    import torch

    from bertology.models import load_model

    torch.manual_seed(0)
    loaded = load_model(args.model, device=args.device)
    words = load_inputs(args.data, args.n)
    fn = {"raw": mode_raw, "extract": mode_extract, "naive": mode_naive}[args.worker]
    fn(loaded, words[: min(16, len(words))], args.batch_size)  # warm-up
    seconds = fn(loaded, words, args.batch_size)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(json.dumps({"mode": args.worker, "n": len(words), "seconds": seconds, "peak_rss_mb": peak_mb, "peak_gpu_mb": gpu_mb}))


def run_mode(args, mode, n):
    cmd = [sys.executable, __file__, "--worker", mode, "--n", str(n), "--model", args.model, "--data", args.data,
           "--device", args.device, "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--n", type=int, default=400, help="sentences")
    p.add_argument("--naive-n", type=int, default=100, help="sentences for the (slow) naive loop")
    p.add_argument("--data", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--worker", choices=["raw", "extract", "naive"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    raw = run_mode(args, "raw", args.n)
    ext = run_mode(args, "extract", args.n)
    ext2 = run_mode(args, "extract", 2 * args.n)
    naive = run_mode(args, "naive", args.naive_n)
    rate = {k: r["n"] / r["seconds"] for k, r in [("raw", raw), ("extract", ext), ("naive", naive)]}
    print(f"model={args.model} device={args.device} batch_size={args.batch_size}")
    print(f"{'mode':<28}{'sentences':>10}{'seconds':>10}{'sent/s':>10}{'peak RSS MB':>13}")
    for label, r in [("raw batched forward", raw), ("extract + word-level + reduce", ext),
                     ("  same, 2x sentences", ext2), ("naive per-sentence loop", naive)]:
        print(f"{label:<28}{r['n']:>10}{r['seconds']:>10.2f}{r['n'] / r['seconds']:>10.1f}{r['peak_rss_mb']:>13.0f}")
    print(f"extract / raw throughput   = {rate['extract'] / rate['raw']:.2f}  (goal >= 0.8)")
    print(f"extract / naive throughput = {rate['extract'] / rate['naive']:.1f}x (goal >= 3x)")
    print(f"peak RSS 2x / 1x sentences = {ext2['peak_rss_mb'] / ext['peak_rss_mb']:.2f}  (flat memory: ~1.0)")


if __name__ == "__main__":
    main()
