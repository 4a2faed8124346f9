"""scripts/compare_results.py: the before/after check of a refactor's quick-run numbers."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_results.py"
spec = importlib.util.spec_from_file_location("compare_results", SCRIPT)
cr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cr)


def _write(root: Path, nb: str, obj) -> None:
    (root / "minilm" / nb).mkdir(parents=True, exist_ok=True)
    (root / "minilm" / nb / "results.json").write_text(json.dumps(obj))


def test_differences_missing_keys_and_timings(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "01", {"values": {"x": 1.0, "y": [1, 2.5], "ok": True, "extract_seconds": 3.0, "nan": float("nan")}})
    _write(b, "01", {"values": {"x": 1.0 + 1e-9, "y": [1, 2.6], "ok": False, "extract_seconds": 9.0,
                                "nan": float("nan"), "new": 4}})
    _write(a, "02", {"v": 1})
    lines, ignored = cr.compare(a, b)
    assert ignored == 1  # extract_seconds
    f1, f2 = Path("minilm/01/results.json"), Path("minilm/02/results.json")
    assert lines == [f"{f1}: values.new only in {b}",
                     f"{f1}: values.y[1]: 2.5 vs 2.6 (relative 3.85e-02)",  # x within 1e-6, bools and NaN equal
                     f"{f2}: only in {a}"]
    assert cr.main([str(a), str(b)]) == 1
    assert "3 difference(s)" in capsys.readouterr().out
    assert cr.main([str(a), str(a)]) == 0
