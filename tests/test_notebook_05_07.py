"""End to end: notebooks 05 (semantic roles) and 07 (world knowledge) in quick mode on the default model."""
import json

import pandas as pd
import pytest

from conftest import run_quick
from bertology import knowledge as kn

SOURCES = {"mlm", "readout", "control"}


@pytest.mark.slow
def test_notebooks_05_07_quick_reports(tmp_path):
    code = run_quick(tmp_path, "05", "07")
    assert code == 0
    base = tmp_path / "minilm"

    r5 = json.loads((base / "05_semantic_roles" / "results.json").read_text())
    assert r5["meta"]["quick"] is True
    # minilm has no MLM head: the report must say so, and no number may claim to come from one
    assert any("could NOT be evaluated" in n for n in r5["meta"]["notes"])
    for name in ("ettinger_scores", "ettinger_accuracy", "ettinger_sensitivity", "ettinger_summary", "selectional_summary"):
        df = pd.DataFrame(r5["tables"][name])
        assert set(df["source"]) == {"readout", "control"}, name
    acc = pd.DataFrame(r5["tables"]["ettinger_accuracy"])
    assert acc["accuracy"].between(0, 1).all()
    a = acc.pivot_table(index=["source", "suite", "variant"], columns="k", values="accuracy")
    assert (a[5] >= a[1]).all()  # top-5 contains top-1
    sens = pd.DataFrame(r5["tables"]["ettinger_sensitivity"])
    assert (sens["sensitivity_thresh"] <= sens["sensitivity"] + 1e-12).all()  # the threshold only removes wins
    sp = pd.DataFrame(r5["tables"]["selectional_summary"]).pivot_table(index="source", columns="metric", values="value")
    # the full order right implies each adjacent pair right
    assert (sp["exact order"] <= sp[["typical > atypical", "atypical > implausible"]].min(axis=1) + 1e-12).all()
    assert len(r5["values"]["key_numbers"]) >= 1
    assert (base / "05_semantic_roles" / "figures" / "ettinger_overview.png").stat().st_size > 10_000

    r7 = json.loads((base / "07_world_knowledge" / "results.json").read_text())
    assert any("could NOT be evaluated" in n for n in r7["meta"]["notes"])
    prec = pd.DataFrame(r7["tables"]["lama_precision"])
    assert set(prec["source"]) == {"readout", "control"}
    p = prec.pivot_table(index=["source", "corpus"], columns="k", values="value")
    assert (p[10] >= p[1]).all() and p.stack().between(0, 1).all()
    counts = pd.DataFrame(r7["tables"]["lama_fact_counts"])
    assert (counts["n_kept"] + counts["n_dropped"] == counts["n_facts"]).all()
    neg = pd.DataFrame(r7["tables"]["negation"])
    assert neg["value"].between(0, 1).all() and set(neg["source"]) <= SOURCES
    forbes = pd.DataFrame(r7["tables"].get("forbes_scores", []))
    if len(forbes):
        assert {"human", "majority"} <= set(forbes["system"]) and len(set(forbes["system"])) == 4
        human = forbes[forbes["system"] == "human"].set_index(["task", "category"])["value"]
        want = kn.human_scores().set_index(["task", "category"])["value"]
        pd.testing.assert_series_equal(human.sort_index(), want.sort_index(), check_names=False, atol=1e-9)
        assert forbes["value"].between(0, 1).all()
    assert (base / "07_world_knowledge" / "figures" / "lama_precision.png").stat().st_size > 10_000
