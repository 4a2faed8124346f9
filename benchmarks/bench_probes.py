"""What one epoch of Hewitt & Manning's structural probe costs at bert-base size, and where it goes.

    python benchmarks/bench_probes.py                    # 13 layers x 768, rank 768, EWT train lengths
    python benchmarks/bench_probes.py --precision bfloat16 --sentences 2000 --epochs 2
    python benchmarks/bench_probes.py --against old_structural_probe.py   # ratio against another version

The states are random (a probe's cost does not depend on what the vectors hold); the sentence
lengths and trees are the first ``--sentences`` of UD English EWT train (the shipped sample when
the data is absent), so the padding of Hewitt & Manning's shuffled batches is the real one.
Printed: seconds per epoch of the distance and depth probes on all layers, fitted with
``max_epochs=--epochs`` and no early stop; with ``--against``, the same for that file's
``fit_probe`` and the ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def word_states(n_sentences: int, layers: int, dim: int, seed: int = 0):
    from bertology import structural_probe as sp
    from bertology.data import load_treebank

    try:
        sents = list(load_treebank("ewt", "train", limit=n_sentences))
    except Exception:  # no data mirror and no network: the shipped sample
        sents = list(load_treebank("sample", "dev", limit=n_sentences))
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum([s.n for s in sents])]).astype(np.int64)
    states = rng.normal(size=(layers, int(offsets[-1]), dim)).astype(np.float32)
    return sp.WordStates(states, offsets, sents)


def time_fit(module, train, dev, kind: str, epochs: int, precision: str) -> float:
    t0 = time.perf_counter()
    module.fit_probe(train, dev, kind, max_epochs=epochs, patience=epochs + 1, precision=precision, progress=False)
    return (time.perf_counter() - t0) / epochs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=2000, help="training sentences (notebook 04's n_train)")
    ap.add_argument("--dev", type=int, default=400)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--against", type=Path, default=None, help="another structural_probe.py to compare with")
    args = ap.parse_args(argv)

    from bertology import structural_probe as sp

    ws = word_states(args.sentences + args.dev, args.layers, args.dim)
    train, dev = ws.subset(range(args.sentences)), ws.subset(range(args.sentences, len(ws)))
    words = int(train.offsets[-1])
    print(f"{len(train)} training sentences, {words} words, {args.layers} layers x {args.dim}, "
          f"rank {args.dim}, {args.precision}")
    other = None
    if args.against:
        spec = importlib.util.spec_from_file_location("bertology.other_structural_probe", args.against)  # its relative imports resolve in bertology
        other = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = other  # dataclasses look their module up while it loads
        spec.loader.exec_module(other)
    for kind in sp.KINDS:
        ours = time_fit(sp, train, dev, kind, args.epochs, args.precision)
        line = f"{kind:8s} {ours:7.2f} s/epoch"
        if other is not None:
            theirs = time_fit(other, other.WordStates(train.states, train.offsets, train.sentences),
                              other.WordStates(dev.states, dev.offsets, dev.sentences), kind, args.epochs,
                              args.precision)
            line += f"   {args.against.name}: {theirs:7.2f} s/epoch   speed-up {theirs / ours:4.2f}x"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
