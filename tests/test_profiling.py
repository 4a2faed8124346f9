"""bertology.profiling: opt-in tallies of where a run's time goes (read by benchmarks/bench_reports.py)."""
import json
import time

from bertology import profiling


def test_timed_is_a_no_op_without_the_variable(monkeypatch):
    monkeypatch.delenv(profiling.ENV, raising=False)
    monkeypatch.setattr(profiling, "_tally", profiling.defaultdict(lambda: [0.0, 0]))
    with profiling.timed("forward"):
        pass
    assert profiling.tally() == {}


def test_timed_sections_add_up_and_flush_writes_json(monkeypatch, tmp_path):
    out = tmp_path / "t.json"
    monkeypatch.setenv(profiling.ENV, str(out))
    monkeypatch.setattr(profiling, "_tally", profiling.defaultdict(lambda: [0.0, 0]))

    @profiling.timed("train")
    def fit():
        time.sleep(0.01)

    fit()
    fit()
    with profiling.timed("forward"):
        pass
    profiling.flush()
    doc = json.loads(out.read_text())
    assert doc["train"]["calls"] == 2 and doc["train"]["seconds"] >= 0.02
    assert doc["forward"]["calls"] == 1 and "pid" in doc


def test_timed_waits_for_the_device_it_was_given(monkeypatch, tmp_path):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setenv(profiling.ENV, str(tmp_path / "t.json"))
    monkeypatch.setattr(profiling, "_tally", profiling.defaultdict(lambda: [0.0, 0]))
    gpu1 = torch.device("cuda:1")
    with profiling.timed("forward", gpu1):
        pass
    with profiling.timed("forward", torch.device("cpu")):  # a CPU has nothing to wait for
        pass
    with profiling.timed("train"):
        pass
    assert calls == [gpu1, gpu1, None, None]  # before and after; None: CUDA's current device
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA unused: no context opened
    profiling.synchronize(None)
    profiling.synchronize(gpu1)
    assert len(calls) == 4
