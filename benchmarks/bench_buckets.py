"""What a batch costs, and what the cheapest cut of the inputs into batches saves.

    python benchmarks/bench_buckets.py                    # MiniLM
    python benchmarks/bench_buckets.py --model /tmp/bertology-bench/bert-base-random --n 32 128

1. Times one forward pass over ``B x T`` tokens for a few shapes and fits
   ``seconds = a + b * B * T``: ``a / b`` is what one more batch costs in padded tokens, the
   ``overhead`` of :func:`bertology.extract.buckets_by_length` (``BATCH_OVERHEAD``).
2. For the first ``n`` EWT dev sentences, times the forward passes of every batch when batches
   are filled up to ``--batch-size`` (``overhead`` so large that the fewest batches win) and when
   they are cut at the least padded tokens plus ``BATCH_OVERHEAD`` per batch (the default), and
   prints the padded tokens and the ratio of the times.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILLED = 10**9  # an overhead that makes the fewest batches win: batches filled up to batch_size


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, nargs="*", default=[32, 128, 500])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from bertology.data import DataUnavailableError, load_treebank
    from bertology.extract import BATCH_OVERHEAD, collate, encode_inputs, forward, length_buckets
    from bertology.models import load_model

    loaded = load_model(args.model, device=args.device)
    print(f"model {loaded.info.name}, device {loaded.device}, {torch.get_num_threads()} threads")

    shapes = [(1, 16), (4, 16), (16, 16), (16, 48), (32, 48)]
    rows = []
    for b, t in shapes:
        batch = {"input_ids": torch.full((b, t), 1000, device=loaded.device),
                 "attention_mask": torch.ones(b, t, dtype=torch.long, device=loaded.device)}
        with torch.inference_mode():
            rows.append((b * t, seconds(lambda: forward(loaded, batch, base=True), args.repeats)))
    tokens, secs = np.array(rows, dtype=float).T
    per_token, per_batch = np.polyfit(tokens, secs, 1)
    print(f"one pass: {per_batch * 1e3:.1f} ms + {per_token * 1e3:.3f} ms per token "
          f"= {per_batch / per_token:.0f} tokens per batch (BATCH_OVERHEAD = {BATCH_OVERHEAD})")

    try:
        sents = load_treebank("ewt", "dev")
    except DataUnavailableError:
        sents = load_treebank("sample", "dev")
    print(f"{'sentences':>9} {'real tokens':>11} | {'filled: batches':>15} {'padded':>7} {'s':>6} | "
          f"{'cheapest: batches':>17} {'padded':>7} {'s':>6} | speed-up")
    for n in args.n:
        encs = encode_inputs(loaded.tokenizer, [s.words for s in sents[:n]], loaded.info.max_length)
        out = []
        for overhead in (FILLED, BATCH_OVERHEAD):
            batches = [collate([encs[i] for i in idx], loaded.device)
                       for idx in length_buckets(encs, args.batch_size, overhead=overhead)]

            def run():
                with torch.inference_mode():
                    for b in batches:
                        forward(loaded, b, base=True)

            out.append((len(batches), sum(b["input_ids"].numel() for b in batches), seconds(run, args.repeats)))
        (nf, pf, sf), (nc, pc, sc) = out
        print(f"{len(encs):>9} {sum(e.n_tokens for e in encs):>11} | {nf:>15} {pf:>7} {sf:>6.2f} | "
              f"{nc:>17} {pc:>7} {sc:>6.2f} | {sf / sc:.2f}x")


if __name__ == "__main__":
    main()
