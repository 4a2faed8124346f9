"""End to end: `bertology run --quick` on the default model, as CI and `make reports` run it."""
import json
import math

import numpy as np
from pathlib import Path

import pytest

from conftest import run_quick
from bertology.notebook import ParameterError, check_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    code = run_quick(out, "01")
    return code, out


@pytest.mark.slow
def test_notebook_01_quick_report(quick_reports):
    code, out = quick_reports
    assert code == 0
    base = out / "minilm"
    html = (base / "01_attention_patterns.html").read_text()
    assert "Where this run deviates from the paper" in html and "What this run shows" in html
    res = json.loads((base / "01_attention_patterns" / "results.json").read_text())
    assert res["meta"]["model"] == "minilm" and res["meta"]["quick"] is True
    assert res["meta"]["sizes"]["n_pairs"] == 48
    patterns = res["tables"]["attention_patterns"]
    assert len(patterns) == 6 * 12 * 11  # layers x heads x metrics
    # the three positional shares of one head can never exceed the whole attention
    by = {(r["layer"], r["head"], r["metric"]): r["value"] for r in patterns}
    for layer in range(6):
        for head in range(12):
            assert by[(layer, head, "to_cls")] + by[(layer, head, "to_sep")] <= 1 + 1e-6
            assert 0 <= by[(layer, head, "entropy")] <= by[(layer, head, "uniform_entropy")] + 1e-6
    grads = res["tables"]["gradient_importance"]
    assert {g["category"] for g in grads} == {"[SEP]", "punctuation", "other"}
    assert all(math.isfinite(g["value"]) and g["value"] > 0 for g in grads)
    assert res["values"]["gradient_objective"] == "reconstruction"  # MiniLM has no MLM head
    for name in ("fig2_special_tokens", "fig3_gradient_importance", "fig4_entropy", "fig1_example_heads"):
        assert (base / "01_attention_patterns" / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (base / "01_attention_patterns" / "figures" / f"{name}.svg").exists()
    assert "01_attention_patterns.html" in (out / "index.html").read_text()


@pytest.mark.slow
def test_wrong_parameter_fails_clearly_and_keeps_good_report(quick_reports, capsys):
    code, out = quick_reports
    good = (out / "minilm" / "01_attention_patterns.html").read_bytes()
    bad = run_quick(out, "01", extra=["-p", "n_pairs=0"])
    assert bad != 0
    err = capsys.readouterr().err
    assert "ParameterError" in err and "n_pairs" in err
    assert (out / "minilm" / "01_attention_patterns.html").read_bytes() == good


def test_check_params_names_the_parameter():
    check_params("minilm", 0, False, "auto", ".", n_pairs=10)
    for kwargs, name in [
        (dict(model="", seed=0, quick=False, device="auto", output_dir="."), "model"),
        (dict(model="m", seed=-1, quick=False, device="auto", output_dir="."), "seed"),
        (dict(model="m", seed=0, quick="yes", device="auto", output_dir="."), "quick"),
        (dict(model="m", seed=0, quick=False, device="gpu", output_dir="."), "device"),
        (dict(model="m", seed=0, quick=False, device="auto", output_dir=".", n_pairs=2.5), "n_pairs"),
    ]:
        with pytest.raises(ParameterError, match=name):
            check_params(**kwargs)


def test_every_notebook_is_clean_and_parameterized():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        doc = json.loads(nb.read_text())
        assert doc["metadata"]["kernelspec"]["language"] == "python", nb.name
        tagged = [c for c in doc["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb.name
        src = "".join(tagged[0]["source"])
        for p in ("model", "quick", "seed", "device", "output_dir"):
            assert f"{p} =" in src, (nb.name, p)
        assert all(not c.get("outputs") for c in doc["cells"] if c["cell_type"] == "code"), nb.name


@pytest.mark.slow
def test_notebooks_02_03_quick_reports(tmp_path):
    code = run_quick(tmp_path, "02", "03")
    assert code == 0
    base = tmp_path / "minilm"
    r2 = json.loads((base / "02_attention_heads_syntax" / "results.json").read_text())
    best = {r["relation"]: r for r in r2["tables"]["relation_heads_best"]}
    assert best["all"]["n"] == max(r["n"] for r in best.values())
    assert all(isinstance(r["head"], int) and r["label"] == f"{r['layer'] + 1}-{r['head'] + 1}" for r in best.values())
    for r in best.values():  # the best head can never do worse than 0 or better than 1; baseline likewise
        assert 0 <= r["baseline_accuracy"] <= 1 and 0 <= r["accuracy"] <= 1
    # per-head table: every head, both directions, for every relation seen
    n_rel = len({r["relation"] for r in r2["tables"]["relation_heads"]})
    assert len(r2["tables"]["relation_heads"]) == n_rel * 2 * 6 * 12
    uas = {(r["probe"], r["model"]): r["uas"] for r in r2["tables"]["parser_probe_uas"]}
    assert set(p for p, _ in uas) == {"right-branching", "attn", "attn+word"}
    if "ud-english-gum" in str(r2["meta"].get("deviations")) or r2["tables"].get("coref_table"):
        systems = {r["system"] for r in r2["tables"]["coref_table"]}
        assert {"nearest mention", "head-word match"} <= systems
    r3 = json.loads((base / "03_head_clustering" / "results.json").read_text())
    same = r3["values"]["layer_similarity"]
    assert 0 < same["p_value"] <= 1 and same["n_heads"] == 72
    pairs = r3["tables"]["head_distances"]
    assert len(pairs) == 72 * 71 // 2 and all(0 <= p["value"] <= np.log(2) + 1e-9 for p in pairs)
    assert len(r3["tables"]["mds_coordinates"]) == 72
    for nb, fig in [("02_attention_heads_syntax", "table1_best_heads_vs_baseline"),
                    ("03_head_clustering", "fig6_mds_behaviour")]:
        assert (base / nb / "figures" / f"{fig}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_notebook_08_quick_report(tmp_path):
    code = run_quick(tmp_path, "08")
    assert code == 0
    r = json.loads((tmp_path / "minilm" / "08_pruning" / "results.json").read_text())
    v, t = r["values"], r["tables"]
    assert v["task"] == "embedding"  # MiniLM has no MLM head
    base = v["unpruned_metric"]
    assert abs(base - 1) < 1e-5  # cosine of the unpruned embedding to itself
    assert len(t["head_importance"]) == 72 and len(t["single_head_per_layer"]) == 72
    # every curve starts at the unpruned model; removing every head is the same model for every order
    curves = t["pruning_curves"]
    for row in curves:
        if row["n_removed"] == 0:
            assert abs(row["metric"] - base) < 1e-6
    ends = {round(row["metric"], 6) for row in curves if row["n_removed"] == 72}
    assert len(ends) == 1
    # the orders of Michel et al.'s Fig. 3 and one random order, which the report calls ours
    assert {(row["order"], row["seed"]) for row in curves} == {("gradient importance", -1), ("ablation", -1), ("random", 0)}
    assert any(n.startswith("Pruning curves: 1 random removal order (n_random) as a baseline of ours") for n in r["meta"]["notes"])
    for row in t["removable_heads"]:
        assert 0 <= row["removable_95"] <= row["removable_90"] <= 72
    assert {r_["strategy"] for r_ in t["layers_vs_heads"]} == {"whole layers", "attention of layers", "heads by importance"}
    phys = v["physical_pruning"]
    assert abs(phys["metric_pruned"] - phys["metric_masked"]) < 1e-4
    assert phys["params_unpruned"] - phys["params_pruned"] == phys["heads_removed"] * (3 * (384 * 32 + 32) + 384 * 32)
    assert v["importance_vs_ablation"]["seconds_gradient"] > 0
    assert (tmp_path / "minilm" / "08_pruning" / "figures" / "fig3_pruning_curves.png").stat().st_size > 10_000
