"""Where a run's time goes: forward passes, probe training, the rest.

Off unless ``BERTOLOGY_TIMINGS`` names a file. Then :func:`timed` sections add their wall time
to a per-process tally, and :func:`flush` (called by ``Run.save`` and at exit) writes it as
JSON: ``{"forward": {"seconds": s, "calls": n}, "train": {...}, "pid": ...}``. The engine's
forward pass is timed as ``"forward"``; probe fitting as ``"train"``. Sections do not nest: an
inner section's time also counts in the outer one, so only leaf sections are used.
``benchmarks/bench_reports.py`` reads the files; nothing in a report depends on them.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

ENV = "BERTOLOGY_TIMINGS"
_tally: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
_registered = False


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextmanager
def timed(section: str, device=None):
    """Add the wall time of the block to ``section`` when timings are on (a no-op otherwise).
    ``device``: the one the block computes on (:func:`synchronize`); None: CUDA's current device."""
    global _registered
    if not enabled():
        yield
        return
    if not _registered:
        atexit.register(flush)
        _registered = True
    synchronize(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        entry = _tally[section]
        entry[0] += time.perf_counter() - t0
        entry[1] += 1


def synchronize(device=None) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously), so that a clock read after it
    times the work and not its launch. A CPU device has nothing to wait for; ``None`` means CUDA's
    current device, and only where CUDA is already in use: torch is not imported here, and no
    CUDA context is opened."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(device, "type", "cuda") != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


def tally() -> dict[str, dict[str, float]]:
    """The sections timed so far in this process."""
    return {k: {"seconds": round(v[0], 4), "calls": int(v[1])} for k, v in _tally.items()}


def flush() -> None:
    """Write the tally to ``$BERTOLOGY_TIMINGS`` (replacing it), if timings are on."""
    path = os.environ.get(ENV)
    if not path:
        return
    from .io import atomic_write_text

    atomic_write_text(path, json.dumps({**tally(), "pid": os.getpid()}, indent=1))
