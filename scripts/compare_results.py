#!/usr/bin/env python3
"""Compare the numbers of two report trees: every ``results.json`` under ``A`` with the file at the
same relative path under ``B``.

Prints each numeric entry (flattened key path, e.g. ``findings.layer_most_to_sep`` or
``tables.heads[3].importance``) whose values differ by more than ``--rtol`` relative (default
1e-6), numeric entries present on one side only, and results files missing on one side; exits 1
if there is any, else 0. Keys matching ``--ignore`` (default: wall-clock timings and speedups,
which change from run to run) are skipped and counted.

    python scripts/compare_results.py /work/baseline-quick /tmp/engine-quick
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

#: Searched in the whole key path (``values.probe_seconds.depth``, ``meta.elapsed_s``).
DEFAULT_IGNORE = r"seconds|elapsed|speed-?up"


def flatten(obj, prefix: str = "") -> dict[str, float]:
    """``{key path: number}`` for every int/float leaf (booleans are not numbers here)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out


def differs(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return not (math.isnan(a) and math.isnan(b))
    if math.isinf(a) or math.isinf(b):
        return a != b
    return abs(a - b) > rtol * max(abs(a), abs(b), 1e-12)


def compare(a_root: Path, b_root: Path, rtol: float = 1e-6, ignore: str = DEFAULT_IGNORE) -> tuple[list[str], int]:
    """Lines describing every difference, and the number of ignored keys."""
    pattern = re.compile(ignore) if ignore else None
    files_a = {p.relative_to(a_root) for p in a_root.rglob("results.json")}
    files_b = {p.relative_to(b_root) for p in b_root.rglob("results.json")}
    lines, n_ignored = [], 0
    for rel in sorted(files_a | files_b):
        if rel not in files_b or rel not in files_a:
            lines.append(f"{rel}: only in {a_root if rel in files_a else b_root}")
            continue
        fa = flatten(json.loads((a_root / rel).read_text()))
        fb = flatten(json.loads((b_root / rel).read_text()))
        for key in sorted(fa.keys() | fb.keys()):
            if pattern is not None and pattern.search(key):
                n_ignored += 1
                continue
            if key not in fa or key not in fb:
                lines.append(f"{rel}: {key} only in {a_root if key in fa else b_root}")
            elif differs(fa[key], fb[key], rtol):
                rel_diff = abs(fa[key] - fb[key]) / max(abs(fa[key]), abs(fb[key]), 1e-12)
                lines.append(f"{rel}: {key}: {fa[key]!r} vs {fb[key]!r} (relative {rel_diff:.2e})")
    return lines, n_ignored


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--ignore", default=DEFAULT_IGNORE, help="regex of key paths to skip ('' skips none)")
    args = ap.parse_args(argv)
    for root in (args.a, args.b):
        if not root.is_dir():
            print(f"{root}: not a directory", file=sys.stderr)
            return 2
    lines, n_ignored = compare(args.a, args.b, args.rtol, args.ignore)
    for line in lines:
        print(line)
    n_files = len({p.relative_to(args.a) for p in args.a.rglob("results.json")})
    print(f"{len(lines)} difference(s) in {n_files} results file(s) under {args.a}; {n_ignored} timing key(s) ignored")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
