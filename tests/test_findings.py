"""The numbers "what this run shows" cells print (notebooks 05-08), on tiny hand-made tables."""
import pandas as pd
import pytest

from bertology import knowledge as kn, numeracy as nm, pruning as pr, semantic_roles as sr


def test_ettinger_key_numbers_pick_the_original_items_of_one_source():
    acc = pd.DataFrame([("readout", "CPRAG", "original", 5, 0.25), ("readout", "CPRAG", "shuffled", 5, 0.9),
                        ("control", "CPRAG", "original", 5, 0.5)], columns=["source", "suite", "variant", "k", "accuracy"])
    sens = pd.DataFrame([("readout", "NEG-SIMP", "original", "negated", 0.75)],
                        columns=["source", "suite", "variant", "comparison", "sensitivity"])
    assert sr.key_numbers(acc, sens, "readout") == {"CPRAG accuracy@5 (readout)": 0.25,
                                                    "NEG negated sensitivity (readout)": 0.75}  # no ROLE scored
    assert sr.key_numbers(acc, sens, "control") == {"CPRAG accuracy@5 (control)": 0.5}


def test_suite_sizes_count_role_pairs():
    suites = {"ROLE": pd.DataFrame({"pair": [0, 0, 1, 1, 2, 2]}), "CPRAG": pd.DataFrame({"pair": [0, 1, 2, 3]})}
    assert sr.suite_sizes(suites) == {"ROLE": 3, "CPRAG": 4}


def test_example_predictions_lists_top_tokens_in_rank_order():
    q = pd.DataFrame({"context": ["a [MASK]", "a [MASK]", "b not [MASK]", "c [MASK]"], "expected": ["x", "x", "y", "z"],
                      "accuracy_row": [True, True, False, False], "condition": ["TA", "TA", "TN", "FA"],
                      "variant": ["original"] * 4, "suite": ["NEG-SIMP"] * 4})
    top = pd.DataFrame({"source": ["readout"] * 3 + ["control"], "context": ["a [MASK]", "a [MASK]", "b not [MASK]", "a [MASK]"],
                        "rank": [2, 1, 1, 1], "token": ["dog", "cat", "bird", "zzz"]})
    ex = sr.example_predictions(q, top, "readout")
    assert ex.columns.tolist() == ["context", "expected", "top 2 (readout)"]
    assert ex.values.tolist() == [["a [MASK]", "x", "cat dog"], ["b not [MASK]", "y", "bird"]]


def test_perturbation_table_shows_spread_only_where_there_is_one():
    summary = pd.DataFrame([("CPRAG", "original", "accuracy@5", "readout", 0.5, 0.0), ("CPRAG", "shuffled", "accuracy@5", "readout", 0.25, 0.1),
                            ("CPRAG", "original", "accuracy@1", "readout", 0.1, 0.0)],
                           columns=["suite", "variant", "metric", "source", "value", "sd"])
    t = sr.perturbation_table(summary, "CPRAG")
    assert t[("value", "readout")].tolist() == [0.5, 0.25] and t[("sd", "readout")].tolist() == [0.0, 0.1]
    assert sr.perturbation_table(summary.assign(sd=float("nan")), "CPRAG").columns.tolist() == ["readout"]


def test_probe_layers_are_evenly_spaced_with_ends():
    assert kn.probe_layers(6, 1) == [6]
    assert kn.probe_layers(6, 4) == [0, 2, 4, 6]
    assert kn.probe_layers(12, 3) == [0, 6, 12]


def test_lama_and_forbes_key_numbers():
    macro = pd.DataFrame([("readout", "T-REx", 1, 0.125), ("readout", "T-REx", 10, 0.5), ("control", "T-REx", 1, 0.0)],
                         columns=["source", "corpus", "k", "value"])
    assert kn.key_numbers(macro, "readout") == {"T-REx P@1 (readout)": 0.125}
    assert kn.key_numbers(macro, "mlm") == {}
    v = {"over_control_op_oa": 0.2, "over_control_ap": -0.01}
    assert kn.key_numbers(macro, "mlm", v) == {"Forbes OP/OA: probe minus control (macro F1)": 0.2,
                                               "Forbes AP: probe minus control (macro F1)": -0.01}


def test_forbes_table_and_text():
    best = pd.DataFrame([("situated-AP", "object", 0.6, 3, "probe", 10), ("situated-AP", "object", 0.55, 1, "control", 10)],
                        columns=["task", "category", "value", "layer", "source", "n"])
    maj = pd.DataFrame([("situated-AP", "object", 0.5)], columns=["task", "category", "value"])
    humans = pd.DataFrame([("situated-AP", "object", 0.9, 50)], columns=["task", "category", "value", "n"])
    t = kn.forbes_table(best, maj, humans, "tiny")
    assert t["system"].tolist() == ["probe on tiny (frozen)", "probe on random-init control", "majority", "human"]
    assert t["layer"].isna().tolist() == [False, False, True, True]
    v = {"gain_op_oa": 0.3, "gain_ap": 0.1, "over_control_op_oa": 0.2, "over_control_ap": 0.01,
         "shortfall_op_oa": 0.25, "shortfall_ap": 0.4, "pattern_vs_control": True}
    lines = kn.forbes_text(v, "tiny")
    assert "by +0.30 on average" in lines[0] and "+0.01 (AP)" in lines[0]
    assert lines[1] == "Distance to the human experts: 0.25 macro F1 below on OP/OA, 0.40 below on AP."
    assert "Forbes et al.'s pattern" in lines[2]
    assert "(both gain little over the control)" in kn.forbes_text({**v, "pattern_vs_control": False, "over_control_op_oa": 0.05}, "t")[2]


def test_load_facts_shipped_says_why():
    facts, origin, lama_data, note = kn.load_facts("shipped")
    assert origin == lama_data == "bertology's own fact set" and "data='shipped' asked for" in note and len(facts) == 30
    with pytest.raises(ValueError, match="'auto' or 'shipped'"):
        kn.load_facts("lama")


def test_tokenization_values_and_numeracy_key_numbers():
    ints = pd.DataFrame({"value": [0, 1, 2, 3], "single": [True, True, False, False]})
    assert nm.tokenization_values(ints) == {"share_single_piece_integers": 0.5, "first_multi_piece_integer": 2}
    assert nm.tokenization_values(ints.assign(single=True))["first_multi_piece_integer"] is None
    probes = pd.DataFrame([("list_max", 99, "model", 0.75), ("list_max", 99, "control", 0.25), ("decoding", 999, "model", 12.0)],
                          columns=["task", "range_max", "embedding", "mean"])
    assert nm.key_numbers(probes, 99) == {"list max accuracy [0,99] (probe on model, best epoch)": 0.75}
    assert nm.key_numbers(probes, 999) == {"decoding RMSE [0,999] (probe on model, best epoch)": 12.0}


def test_single_removals_and_removable_table():
    heads = pd.DataFrame({"label": ["1-1", "1-2", "2-1", "2-2"], "ablation_drop": [-0.02, 0.005, 0.3, 0.01]})
    assert pr.single_removals(heads, base=1.0) == {"improving": 1, "within_1pct": 2, "largest_drop": 0.3,
                                                   "largest_drop_head": "2-1"}
    curves = pd.DataFrame({"n_removed": [0, 2, 4, 0, 2, 4], "metric": [1.0, 0.96, 0.92, 1.0, 0.85, 0.99],
                           "order": ["a"] * 3 + ["random"] * 3, "seed": [-1] * 3 + [0] * 3})
    t = pr.removable_table(curves, base=1.0)
    assert t.to_dict("records") == [{"order": "a", "seed": -1, "removable_90": 4, "removable_95": 2},
                                    {"order": "random", "seed": 0, "removable_90": 0, "removable_95": 0}]


def test_pruning_findings_and_text():
    removable = pd.DataFrame({"order": ["ablation", "gradient importance", "random", "random"], "seed": [-1, -1, 0, 1],
                              "removable_95": [6, 4, 1, 2]})
    best_single = pd.DataFrame({"delta": [-0.01, -0.2, 0.0]})
    lvh = pd.DataFrame({"strategy": ["whole layers", "whole layers", "heads by importance"], "k_layers": [0, 1, 1],
                        "metric": [1.0, 0.7, 0.9]})
    f = pr.findings(2.0, removable, best_single, lvh, steps=[0, 3, 6], n_heads=4)
    assert f == {"base": 2.0, "removable_95_importance": 4, "removable_95_ablation": 6, "removable_95_random": 1.5,
                 "n_random": 2, "curve_step": 3, "n_layers": 3, "layers_near_full_one_head": 2, "one_layer_removed": 0.7,
                 "same_heads_removed": 0.9, "heads_per_layer": 4}
    timing = {"seconds_gradient": 1.0, "seconds_ablation": 30.0, "speedup": 30.0, "spearman_raw": 0.5, "spearman_normalised": 0.25}
    speed = {"heads_removed": 4, "params_unpruned": 1000, "params_pruned": 900, "speedup": 1.1, "max_abs_state_diff": 0.0}
    lines = pr.findings_text(f, "cosine", 24, timing, {"within_1pct": 7, "improving": 0}, speed, "cpu")
    assert lines[0] == "Task: **cosine**, unpruned 2.000 (24 sentences)."
    assert "for all 12 heads" in lines[1] and "(30x longer)" in lines[1] and "0.50 (raw) and 0.25" in lines[1]
    assert "removes 4 heads, ablation order 6, random order 2 on average (curve steps of 3 heads)" in lines[3]
    assert lines[4] == "With one head kept, 2 of 3 layers stay within 5% of the unpruned metric."
    assert "from 1,000 to 900" in lines[6]
    one = pr.findings(2.0, removable.iloc[:3], best_single, lvh, steps=[0, 3, 6], n_heads=4)
    assert one["n_random"] == 1 and one["removable_95_random"] == 1.0
    line = pr.findings_text(one, "cosine", 24, timing, {"within_1pct": 7, "improving": 0}, speed, "cpu")[3]
    assert "ablation order 6, random order 1 (curve steps of 3 heads)" in line  # one order: no "on average"
    none = pr.findings(2.0, removable.iloc[:2], best_single, lvh, steps=[0, 3, 6], n_heads=4)
    assert none["removable_95_random"] is None
    assert "ablation order 6 (curve steps" in pr.findings_text(none, "cosine", 24, timing, {"within_1pct": 7, "improving": 0},
                                                             speed, "cpu")[3]


def test_attention_key_numbers_and_reference():
    from bertology import attention as at

    f = {"max_layer_mean_to_sep": 0.5, "mean_to_self": 0.125, "mean_entropy_last_layer": 2.0, "other": 1}
    assert at.key_numbers(f) == {"max layer-mean attention to [SEP]": 0.5, "mean attention to current token": 0.125,
                                 "mean entropy, last layer (nats)": 2.0}
    text = at.reference_text()
    assert text.count("\n- ") == len(at.CLARK_REFERENCE) and "*(source: paper §3.1 text)*" in text


def test_record_and_keys_on_a_run(tmp_path):
    from bertology.notebook import Run

    run = Run("t", None, tmp_path, 0, True, "cpu", {})
    run.record(a=1, b=[2])
    assert run.keys({"x": 0.123456, "y": None}) == {"x": 0.1235, "y": None}
    assert run.values == {"a": 1, "b": [2], "key_numbers": {"x": 0.1235, "y": None}}


def test_majority_scores_by_hand():
    train = pd.DataFrame({"a": ["x", "y", "z", "x"], "b": ["eat", "eat", "eat", "fly"], "label": [1, 1, 0, 0]})
    test = pd.DataFrame({"a": ["apple", "apple", "rock"], "b": ["eat", "fly", "eat"], "label": [1, 0, 0]})
    # majority: eat -> 1, fly -> 0, so yhat = [1, 0, 1]
    t = kn.majority_scores({"situated-OA": (train, test)})
    got = dict(zip(t["category"], t["value"]))
    assert t["task"].unique().tolist() == ["situated-OA"]
    cats = kn.TASK_CATEGORIES["situated-OA"]
    assert got[cats[0]] == pytest.approx(1.0)      # apple: p = r = 1; rock has no positive pair
    assert got[cats[1]] == pytest.approx(2 / 3)    # eat: p = 1/2, r = 1
    assert got["micro"] == pytest.approx(2 / 3)    # tp 1, fp 1, fn 0


def test_pair_similarity_of_a_number_with_itself_is_one():
    from bertology.models import random_bert

    lm = random_bert(n_layers=1, n_heads=2, hidden_size=8, mlm=False, seed=0, name="tiny")
    pairs = pd.DataFrame({"a": ["12", "7"], "b": ["12", "8"]})
    out = nm.pair_similarity(lm, pairs, layer=1, pool="last", batch_size=4)
    assert out["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-5) and abs(out["cosine"].iloc[1]) <= 1 + 1e-6
    assert out["source"].tolist() == ["tiny layer 1 (last piece)"] * 2 and list(pairs.columns) == ["a", "b"]


def test_pruning_orders_deviation_and_equality_check():
    import numpy as np

    imp = {"normalised": np.array([[0.2, 0.1], [0.3, 0.0]]), "raw": np.array([[0.0, 0.1], [0.2, 0.3]]),
           "drops": np.array([[0.5, 0.5], [0.1, 0.2]])}
    o = pr.orders(imp)
    assert list(o) == ["gradient importance", "gradient importance (raw)", "ablation"]
    assert o["gradient importance"] == [(1, 1), (0, 1), (0, 0), (1, 0)]  # least important first
    assert o["gradient importance (raw)"] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert o["ablation"] == [(1, 0), (1, 1), (0, 0), (0, 1)]  # ties keep head order
    assert pr.orders(imp, raw=False) == {k: o[k] for k in ("gradient importance", "ablation")}
    assert pr.data_deviation("cosine", 24, "sample (dev)").startswith("Data: cosine on 24 dev sentences of sample (dev) (Michel")
    assert ", importance on 12 training sentences (" in pr.data_deviation("cosine", 24, "sample (dev)", 12)
    ok = {"metric_pruned": 0.9, "metric_masked": 0.9004}
    assert pr.check_pruned_equals_masked(ok) is ok
    with pytest.raises(RuntimeError, match="does not equal masking"):
        pr.check_pruned_equals_masked({"metric_pruned": 0.9, "metric_masked": 0.95})
