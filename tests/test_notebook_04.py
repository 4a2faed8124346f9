"""End to end: `bertology run --notebooks 04 --quick` on the default model (no MLM head)."""
import json
import math

import pytest

from conftest import run_quick



@pytest.mark.slow
def test_notebook_04_quick_report(tmp_path):
    code = run_quick(tmp_path, "04")
    assert code == 0
    base = tmp_path / "minilm" / "04_syntax_probes"
    res = json.loads((base / "results.json").read_text())
    meta, tables, values = res["meta"], res["tables"], res["values"]
    assert meta["quick"] is True and meta["model"] == "minilm"
    n_layers = meta["model_info"]["n_layers"]
    # the model at every layer 0..L, the control at the model's best layers (said in the report), four
    # metrics each, all within their ranges
    probe = tables["structural_probe"]
    assert {r["model"] for r in probe} == {"minilm", "random-init control"}
    assert {r["layer"] for r in probe if r["model"] == "minilm"} == set(range(n_layers + 1))
    best = {values["probe_summary"]["best_layer_uuas"], values["probe_summary"]["best_layer_nspr"]}
    control_layers = {r["layer"] for r in probe if r["model"] == "random-init control"}
    assert control_layers == set(values["control_layers"]) == best  # the model's best layers only, by default
    assert len(probe) == ((n_layers + 1) + len(control_layers)) * 4
    assert any(n.startswith("Random-init control: structural probes at layer") and "(the model's best distance" in n
               and "control_layers=4 adds 4 evenly spaced layers, control_layers=None probes every layer." in n
               for n in meta["notes"])
    for r in probe:
        lo = -1 if r["metric"] in ("dspr", "nspr") else 0
        assert lo <= r["value"] <= 1 and r["n"] > 0, r
    summary = values["probe_summary"]
    by = {(r["model"], r["layer"], r["metric"]): r["value"] for r in probe}
    assert summary["uuas_best"] == pytest.approx(max(by[("minilm", layer, "uuas")] for layer in range(n_layers + 1)))
    assert set(values["key_numbers"]) >= {f"UUAS, best layer ({summary['best_layer_uuas']})", "UUAS, layer 0 (embeddings)"}
    # rank sweep: one fit per rank, on the best layer only
    sweep = tables["rank_sweep"]
    assert {r["rank"] for r in sweep} == set(values["ranks"])
    assert {r["layer"] for r in sweep} == {summary["best_layer_uuas"]} and {r["model"] for r in sweep} == {"minilm"}
    assert all(r["n"] == values["blimp_pairs"]["n_pairs"] for r in tables["blimp_overall"])  # every scorer, every pair
    # the findings cell prints the recorded numbers (structural_probe.findings_text on probe_summary)
    html = (tmp_path / "minilm" / "04_syntax_probes.html").read_text()
    assert f"with UUAS <strong>{summary['uuas_best']:.3f}</strong>" in html
    # example tree: a spanning tree over the non-punctuation words
    tree = values["example_tree"]
    assert len(tree["predicted"]) == len(tree["gold"]) and 0 <= tree["correct"] <= tree["total"]
    # perturbations: counts add up; truncation leaves layer-0 states of surviving words unchanged
    counts = {r["perturbation"]: r for r in tables["perturbation_counts"]}
    assert set(counts) == {"shuffle", "truncate", "drop_subject", "drop_object"}
    n_intact = counts["shuffle"]["n_sentences"] + counts["shuffle"]["n_skipped"]
    assert all(c["n_sentences"] + c["n_skipped"] == n_intact for c in counts.values())
    sim = {(r["perturbation"], r["layer"], r["metric"]): r["value"] for r in tables["perturbation_similarity"]}
    assert sim[("truncate", 0, "cka")] == pytest.approx(1.0, abs=1e-4)
    assert sim[("truncate", 0, "cosine")] == pytest.approx(1.0, abs=1e-4)
    assert sim[("shuffle", n_layers, "cka")] < 1 - 1e-3  # word order does reach the last layer
    assert all(math.isfinite(v) for v in sim.values())
    for name in ("probe_by_layer", "rank_sweep", "example_tree", "perturbation_similarity", "perturbation_probe"):
        assert (base / "figures" / f"{name}.png").stat().st_size > 10_000
    # method deviations come from the register (bertology.fidelity), with this run's option values
    devs = meta["deviations"]
    assert any(d.startswith("Punctuation excluded from UUAS and root% is UPOS PUNCT") for d in devs)
    assert "Adam learning rate 0.01 (Hewitt & Manning: 0.001)." in devs  # quick mode's larger step
    assert not any(d.startswith("Probe maximum rank") for d in devs)  # default rank = hidden size
    assert meta["methods"]["hewitt_manning.probe"]["hidden_size"] == meta["model_info"]["hidden_size"]
    assert {"goldberg.agreement", "blimp.pll"} <= set(meta["methods"])
    assert {r["rank"] for r in probe} == {meta["model_info"]["hidden_size"]}
    assert "What this run shows" in html and "Where this run deviates from the paper" in html
