"""End to end: notebook 06 (numeracy) in quick mode on the default model, offline."""
import json
import math

import pytest

from conftest import run_quick



@pytest.mark.slow
def test_notebook_06_quick_report(tmp_path):
    code = run_quick(tmp_path, "06")
    assert code == 0
    base = tmp_path / "minilm"
    html = (base / "06_numeracy.html").read_text()
    assert "What this run shows" in html and "Where this run deviates from the paper" in html
    res = json.loads((base / "06_numeracy" / "results.json").read_text())
    meta, tables, values = res["meta"], res["tables"], res["values"]
    assert meta["model"] == "minilm" and meta["quick"] is True
    assert values["ranges"] == [99, 999] and values["probe_layer"] == 6
    assert values["encode"] == "context"  # the authors' encoding by default: a list or pair is one input
    # method deviations come from the register: the shortened training, not the encoding; one run per
    # cell (the paper's Table 4) is the default, so no seeds deviation
    devs = meta["deviations"]
    assert any(d.startswith("Probe training is shortened") for d in devs)
    assert not any("encode=" in d for d in devs) and not any("seeds" in d for d in devs)
    assert meta["methods"]["wallace.probes"]["encode"] == "context"

    # tokenization: 0..10000, every 1- and 2-digit integer is one piece in BERT's uncased vocabulary
    by_digits = {r["digits"]: r for r in tables["integer_pieces_by_digits"]}
    assert sum(r["n"] for r in by_digits.values()) == 10001
    assert by_digits[1]["share_single"] == 1.0 and by_digits[2]["share_single"] == 1.0
    assert by_digits[4]["mean_pieces"] > 1.5
    pair = tables["similar_pairs"][0]
    assert (pair["a"], pair["pieces_a"], pair["pieces_b"]) == ("1.06", "1 . 06", "1 . 08")
    assert -1 <= pair["cosine"] <= 1

    # probes: every cell (3 tasks x 2 ranges x 3 embeddings) is one run, and each number says where it came from
    summary = tables["probe_summary"]
    assert len(summary) == 3 * 2 * 3 and all(r["n_seeds"] == 1 for r in summary)
    assert {r["embedding"] for r in summary} == {"model", "control", "value"}
    assert all("fitted probe" in r["label"] for r in summary)
    cell = {(r["task"], r["range_max"], r["embedding"]): r["mean"] for r in summary}
    for r in (99, 999):
        assert 0 <= cell[("list_max", r, "model")] <= 1
        # the value-encoded sanity embedding is decoded far better than the random-init control
        assert cell[("decoding", r, "value")] < 0.2 * cell[("decoding", r, "control")]
    # MiniLM's numbers carry value information a random-init network does not
    assert cell[("decoding", 99, "model")] < cell[("decoding", 99, "control")]
    runs = tables["probe_runs"]
    assert len(runs) == 3 * 2 * 3
    # the reported figure is the best epoch on held-out numbers; the last step is kept beside it
    for r in runs:
        assert (r["value"] >= r["final"]) if r["metric"] == "accuracy" else (r["value"] <= r["final"])
    assert {r["n_test"] for r in runs if r["task"] != "decoding"} == {200}
    assert all("mean_final" in r for r in summary)

    # NumerSense (or the shipped fallback): no MLM head, so a fitted readout and/or the control, labelled
    ns = tables["numersense_metrics"]
    sources = {r["source"] for r in ns}
    assert "control" in sources and "mlm" not in sources
    hit1 = {r["source"]: r for r in ns if r["metric"] == "hit@1"}
    assert all(0 <= r["value"] <= 1 and math.isclose(r["chance"], 1 / 12) for r in hit1.values())
    assert any("no masked-LM head" in n for n in meta["notes"])
    assert len(values["key_numbers"]) == 3
    for name in ("integer_pieces", "decimal_pieces", "probe_results", "decoding_predictions", "numersense_hits"):
        assert (base / "06_numeracy" / "figures" / f"{name}.png").stat().st_size > 5_000
