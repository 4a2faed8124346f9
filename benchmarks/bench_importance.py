"""Benchmark: head importance from the head-mask gradient vs leave-one-head-out ablation.

Michel et al. (2019, §4.1) score all heads with one forward + backward pass per batch; the oracle
removes each head in turn and re-evaluates (one forward pass over the data per head). Prints, for
the same model, task and sentences in one run:
  * seconds for each, and their ratio (goal: gradient >= 20x faster);
  * Spearman rank correlation between the gradient scores and the ablation drops, raw and with
    Michel's per-layer L2 normalisation. Importance is the authors' definition (|per-token gate
    gradient|, ``pruning.head_importance`` defaults), scored here on the evaluation sentences.

Usage:  python benchmarks/bench_importance.py [--model minilm] [--task auto] [--n 64] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="auto", help="mlm, upos, embedding or auto (the notebook's default)")
    ap.add_argument("--n", type=int, default=64, help="evaluation sentences")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from bertology import pruning as pr
    from bertology.data import DataUnavailableError, load_treebank
    from bertology.models import load_model

    loaded = load_model(args.model, device=args.device)
    name = "ewt" if args.data == "auto" else args.data
    try:
        sents = load_treebank(name, "dev", limit=args.n)
        train = load_treebank(name, "train", limit=500) if args.task == "upos" else None
    except DataUnavailableError:
        sents = load_treebank("sample", "dev", limit=args.n)
        train = load_treebank("sample", "train", limit=500) if args.task == "upos" else None
    task_name = pr.default_task(loaded.info) if args.task == "auto" else args.task
    task = pr.build_task(loaded, task_name, sents, train, batch_size=args.batch_size)
    pr.evaluate(loaded, task)  # warm-up: first-call allocations are not part of either method

    t = time.perf_counter()
    raw = pr.head_importance(loaded, task, normalize=False)
    t_grad = time.perf_counter() - t
    t = time.perf_counter()
    drops = pr.ablation_drops(loaded, task)
    t_abl = time.perf_counter() - t

    norm = pr.normalize_by_layer(raw)  # the authors' per-layer L2 normalisation
    res = {
        "model": loaded.info.name, "device": str(loaded.device), "task": task_name, "sentences": len(sents),
        "heads": int(raw.size), "seconds_gradient": round(t_grad, 3), "seconds_ablation": round(t_abl, 3),
        "speedup": round(t_abl / t_grad, 1),
        "spearman_raw": round(pr.spearman(raw, drops), 3), "spearman_normalised": round(pr.spearman(norm, drops), 3),
    }
    print(json.dumps(res, indent=1))
    print(f"gradient importance is {res['speedup']}x faster than leave-one-head-out ablation "
          f"({'meets' if res['speedup'] >= 20 else 'MISSES'} the 20x goal); rank correlation "
          f"{res['spearman_raw']} raw, {res['spearman_normalised']} layer-normalised")
    return res


if __name__ == "__main__":
    main()
