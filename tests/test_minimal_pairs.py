"""Agreement and BLiMP scoring on a tiny MLM whose scores are set by hand, plus the data loaders."""
import math

import numpy as np
import pandas as pd
import pytest

from bertology import minimal_pairs as mp
from conftest import bias_only_mlm
from bertology.cloze import mlm_scorer, word_pieces
from bertology.data import DataUnavailableError


@pytest.fixture(scope="module")
def scorer(tokenizer):
    """logits = decoder bias at every position: 'is' 2, 'are' 1, 'paris' 3, all else 0."""
    return mlm_scorer(bias_only_mlm(tokenizer, {"is": 2.0, "are": 1.0, "paris": 3.0}))


def items():
    return pd.DataFrame({
        "dataset": ["a", "a", "a", "b", "b"],
        "condition": ["x"] * 5,
        "n_attractors": [0, 1, 1, 0, 0],
        "context": ["The dog [MASK] here .", "The dogs near him [MASK] here .", "It [MASK] good .",
                    "They [MASK] here .", "He [MASK] here ."],
        "correct": ["is", "are", "unbelievably", "were", "was"],
        "wrong": ["are", "is", "is", "was", "were"],
    })


def test_agreement_scores_skips_and_accuracy(scorer, tokenizer):
    lz = math.log(math.exp(2) + math.exp(1) + math.exp(3) + len(tokenizer) - 3)
    s = mp.score_agreement(scorer, items())
    assert s["skipped"].tolist() == ["", "", "correct form is several word pieces", "", ""]
    assert s.loc[0, "logprob_correct"] == pytest.approx(2 - lz, abs=1e-4)
    assert s.loc[0, "logprob_wrong"] == pytest.approx(1 - lz, abs=1e-4)
    # is > are: item 0 right, item 1 wrong; were/was tie at bias 0: strict comparison -> wrong
    assert s["right"].tolist()[:2] == [1.0, 0.0] and np.isnan(s.loc[2, "right"]) and s["right"].tolist()[3:] == [0.0, 0.0]
    assert set(s["source"]) == {"mlm"}
    acc = mp.agreement_accuracy(s, by=["dataset", "n_attractors"]).set_index(["dataset", "n_attractors"])
    assert acc.loc[("a", 0), "accuracy"] == 1.0 and acc.loc[("a", 0), "n"] == 1
    assert acc.loc[("a", 1), "accuracy"] == 0.0 and acc.loc[("a", 1), "n"] == 1 and acc.loc[("a", 1), "n_skipped"] == 1
    assert acc.loc[("b", 0), "accuracy"] == 0.0 and acc.loc[("b", 0), "n"] == 2
    skip = mp.skip_summary(s)
    assert skip.to_dict("records") == [{"dataset": "a", "reason": "correct form is several word pieces", "n": 1,
                                        "share": pytest.approx(1 / 3)}]


def test_blimp_scoring_is_pll_comparison(scorer, tokenizer):
    lz = math.log(math.exp(2) + math.exp(1) + math.exp(3) + len(tokenizer) - 3)
    pairs = pd.DataFrame({"paradigm": ["p1", "p1", "p2"], "phenomenon": ["A", "A", "B"], "field": ["f"] * 3,
                          "pair_id": [0, 1, 0], "good": ["paris is", "are", "it is"], "bad": ["paris are", "is", "it are"]})
    s = mp.score_blimp(scorer, pairs, batch_size=3)
    assert s.loc[0, "pll_good"] == pytest.approx((3 - lz) + (2 - lz), abs=1e-3)
    assert s.loc[0, "pll_bad"] == pytest.approx((3 - lz) + (1 - lz), abs=1e-3)
    assert s["right"].tolist() == [1.0, 0.0, 1.0]
    by_p = mp.blimp_accuracy(s, "paradigm").set_index("group")["accuracy"]
    assert by_p.to_dict() == {"p1": 0.5, "p2": 1.0}
    # overall = mean of the paradigm accuracies, as mlm-scoring's accuracy.py: (0.5 + 1.0) / 2, not 2/3 pooled
    overall = mp.blimp_accuracy(s, "overall")
    assert overall["accuracy"].iloc[0] == pytest.approx(0.75) and overall["n"].iloc[0] == 3
    with pytest.raises(ValueError, match="by must be"):
        mp.blimp_accuracy(s, "uid")


def test_shipped_stimuli_are_well_formed(tokenizer):
    a = mp.load_agreement_stimuli()
    assert len(a) == 40 and set(a["n_attractors"]) == {0, 1, 2}
    # every verb form is one word piece of the default tokenizer, so offline runs skip nothing
    assert all(len(word_pieces(tokenizer, w)) == 1 for w in pd.concat([a["correct"], a["wrong"]]))
    b = mp.load_blimp_stimuli()
    assert len(b) >= 30 and list(b.columns) == ["paradigm", "phenomenon", "field", "pair_id", "good", "bad"]
    assert (b["good"] != b["bad"]).all()


def test_offline_fallback(monkeypatch):
    def unavailable(dataset, file):
        raise DataUnavailableError(f"{dataset}/{file}: no mirror, no cache, no network")

    monkeypatch.setattr("bertology.data.data_path", unavailable)
    items_, notes = mp.agreement_items("auto")
    assert items_["dataset"].unique().tolist() == ["bertology-stimuli"] and "hand-written" in notes[-1]
    with pytest.raises(DataUnavailableError):
        mp.agreement_items("linzen")
    pairs, notes = mp.blimp_pairs("auto")
    assert pairs["field"].unique().tolist() == ["bertology-stimuli"] and "BLiMP unavailable" in notes[0]


def _have(dataset, file):
    from bertology.data import data_path

    try:
        data_path(dataset, file)
        return True
    except DataUnavailableError:
        return False


@pytest.mark.skipif(not _have(*mp.GULORDAVA), reason="Gulordava data not available")
def test_real_agreement_sets():
    g = mp.load_gulordava()
    assert len(g) == 410 and (g["condition"] == "original").sum() == 41
    assert g["n_attractors"].value_counts().to_dict() == {0: 330, 1: 70, 2: 10}
    first = g.iloc[0]
    assert first["context"].startswith("An agreeable insight executed in fifty [MASK] there")
    assert (first["correct"], first["wrong"]) == ("represents", "represent")
    lz = mp.load_linzen()
    assert len(lz) == 7489 and lz["n_attractors"].max() == 4
    assert lz.iloc[0]["context"].startswith("as a consequence of being mostly privately owned , the town [MASK] very")
    assert mp.load_linzen(limit=5).shape[0] == 5


@pytest.mark.skipif(not _have("blimp", "data/adjunct_island.jsonl"), reason="BLiMP not available")
def test_real_blimp_loader():
    assert len(mp.blimp_paradigms()) == 67
    b = mp.load_blimp(["adjunct_island", "anaphor_number_agreement"], limit=3)
    assert len(b) == 6 and b["phenomenon"].tolist()[:1] == ["island_effects"]
    assert b.iloc[0]["good"] == "Who should Derek hug after shocking Richard?"
    with pytest.raises(ValueError, match="unknown BLiMP paradigms"):
        mp.load_blimp(["no_such_paradigm"])


def test_skip_summary_when_nothing_skipped(scorer):
    s = mp.score_agreement(scorer, items().iloc[[0, 1]])
    assert mp.skip_summary(s).empty and list(mp.skip_summary(s).columns) == ["dataset", "reason", "n", "share"]


def test_blimp_groups_are_mlm_scorings_twelve():
    # mlm-scoring's accuracy.py: 12 groups; the two s-selection paradigms are in argument_structure
    assert len(mp.MLM_SCORING_GROUPS) == 12
    assert sum(len(v) for v in mp.MLM_SCORING_GROUPS.values()) == 67
    assert mp.mlm_scoring_group("animate_subject_trans") == "argument_structure"
    with pytest.raises(ValueError, match="none of mlm-scoring"):
        mp.mlm_scoring_group("no_such_uid")
    # 3 paradigms: causative (2 of 2 right), animate_subject_passive (0 of 4), adjunct_island (1 of 2)
    scored = pd.DataFrame({
        "paradigm": ["causative"] * 2 + ["animate_subject_passive"] * 4 + ["adjunct_island"] * 2,
        "phenomenon": ["argument_structure"] * 2 + ["s-selection"] * 4 + ["island_effects"] * 2,
        "field": ["syntax"] * 8, "right": [1.0, 1.0, 0, 0, 0, 0, 1.0, 0],
        "source": ["mlm"] * 8, "scorer": ["m"] * 8})
    g = mp.blimp_accuracy(scored, "group").set_index("group")
    # argument_structure = mean(1.0, 0.0) = 0.5 over 6 pairs (pooled would be 2/6)
    assert g.loc["argument_structure", "accuracy"] == pytest.approx(0.5) and g.loc["argument_structure", "n"] == 6
    assert g.loc["island_effects", "accuracy"] == pytest.approx(0.5) and len(g) == 2
    ph = mp.blimp_accuracy(scored, "phenomenon").set_index("group")["accuracy"].to_dict()
    assert ph == {"argument_structure": 1.0, "s-selection": 0.0, "island_effects": 0.5}
    assert mp.blimp_accuracy(scored, "overall")["accuracy"].iloc[0] == pytest.approx(0.5)


def test_goldberg_selection_rules():
    df = pd.DataFrame({
        "dataset": ["gulordava", "gulordava", "gulordava", "linzen", "linzen", "linzen", "linzen", "other"],
        "n_attractors": [0, 1, 0, 0, 1, 4, 2, 0],
        "correct": ["is", "are", "runs", "is", "is", "have", "has", "is"],
        "wrong": ["are", "is", "run", "are", "are", "has", "have", "are"],
        "context": ["x [MASK]"] * 8})
    sel = mp.goldberg_selection(df)
    # Gulordava: is/are dropped; Linzen: 0 attractors dropped, is/are kept; other sets untouched
    assert sel["correct"].tolist() == ["runs", "is", "have", "has", "is"]
    # with a count of intervening nouns, Linzen keeps only items where every one is an attractor
    sel = mp.goldberg_selection(df.assign(n_intervening=[0, 1, 0, 0, 1, 5, 2, 0]))
    assert sel["correct"].tolist() == ["runs", "is", "has", "is"]


@pytest.mark.skipif(not _have(*mp.GULORDAVA), reason="Gulordava data not available")
def test_goldberg_selection_on_the_real_sets():
    items, _ = mp.agreement_items("auto")
    by = items.groupby("dataset").size().to_dict()
    # Gulordava: 410 items less the 14 is/are ones Goldberg skipped (his results file logs 14 "skipping is/are")
    # Linzen subset: 7,489 less the 1,972 without attractors
    assert by == {"gulordava": 396, "linzen": 5517}
    assert len(mp.agreement_items("gulordava", selection="all")[0]) == 410
    assert len(mp.agreement_items("linzen", limit=7)[0]) == 7
    with pytest.raises(ValueError, match="selection"):
        mp.agreement_items("auto", selection="some")


def test_goldberg_reference_numbers_carry_their_source():
    ref = pd.DataFrame(mp.REFERENCE["agreement"])
    base = ref[(ref.model == "bert-base-uncased")].set_index("n_attractors")
    assert base.loc["all", "accuracy"] == 0.833 and base.loc["all", "n"] == 383
    assert [base.loc[k, "accuracy"] for k in (0, 1, 2)] == [0.836, 0.81, 0.889]
    assert ref["source"].str.contains("yoavg/bert-syntax results/gulordava_results_").all()


def test_agreement_plot_labels_only_the_bars_drawn():
    """A scorer can lack a level (all its items out of vocabulary): the figure still draws and
    prints each drawn bar's item count once."""
    import matplotlib.pyplot as plt

    from bertology import plots_probes

    t = pd.DataFrame(dict(dataset=["a"] * 3, n_attractors=[0, 1, 0], scorer=["x", "x", "y"],
                          accuracy=[0.5, 0.6, 0.7], n=[10, 5, 8]))
    fig = plots_probes.agreement_by_attractors(t)
    assert sorted(txt.get_text() for txt in fig.axes[0].texts) == ["10", "5", "8"]
    plt.close(fig)


# --------------------------------------------------------------------------- notebook 04 tables and findings


def test_agreement_tables_and_shuffling_with_a_context_blind_scorer(scorer):
    s = mp.score_agreement(scorer, items())
    t = mp.agreement_tables(s, "mlm")
    assert list(t) == ["accuracy", "by_condition", "skipped"]
    assert t["by_condition"][["dataset", "condition", "accuracy", "n", "n_skipped"]].values.tolist() == [
        ["a", "x", 0.5, 2, 1], ["b", "x", 0.0, 2, 0]]
    assert t["skipped"]["n"].tolist() == [1]
    # the scorer ignores the context (bias only), so shuffling the context words changes nothing: a 1/2, b 0/2
    sh = mp.agreement_under_shuffling(scorer, s, seed=0)
    assert sh[["dataset", "perturbation", "accuracy", "n"]].values.tolist() == [
        ["a", "intact", 0.5, 2], ["b", "intact", 0.0, 2], ["a", "shuffled", 0.5, 2], ["b", "shuffled", 0.0, 2]]


def test_blimp_tables_sizes_and_reference():
    scored = pd.DataFrame({"paradigm": ["anaphor_gender_agreement", "anaphor_gender_agreement", "causative"],
                           "phenomenon": ["anaphor_agreement", "anaphor_agreement", "argument_structure"],
                           "field": ["morphology"] * 3, "right": [1.0, 0.0, 1.0], "source": "mlm", "scorer": "m"})
    t = mp.blimp_tables(scored, "mlm-scoring")
    assert list(t) == ["paradigm", "phenomenon", "overall"]
    assert t["phenomenon"]["level"].iloc[0] == "group" and t["overall"]["accuracy"].iloc[0] == 0.75  # (0.5 + 1) / 2
    assert mp.blimp_tables(scored, "linguistics_term")["phenomenon"]["level"].iloc[0] == "phenomenon"
    with pytest.raises(ValueError, match="grouping"):
        mp.blimp_tables(scored, "field")
    assert mp.blimp_sizes(scored, 2) == {"n_pairs": 3, "n_paradigms": 2, "n_per_paradigm": 2}
    ref = mp.reference_table("blimp_overall")
    assert set(ref["note"]) == {"reference, not target"} and len(ref) == len(mp.REFERENCE["blimp_overall"])
    with pytest.raises(ValueError, match="no reference"):
        mp.reference_table("lama")
    assert mp.language_note("Korean") == ("Agreement and BLiMP (section 2) are English test sets: for this Korean "
                                          "run they measure the model on English, not on Korean.")


def _accuracy_tables():
    agree = pd.DataFrame([("g", 0, "readout", "fitted readout", 0.5, 4, 0), ("g", 1, "readout", "fitted readout", 1.0, 1, 2),
                          ("g", 2, "readout", "fitted readout", float("nan"), 0, 1),
                          ("g", 0, "control", "random control", 0.25, 4, 0), ("g", 1, "control", "random control", 0.0, 1, 2)],
                         columns=["dataset", "n_attractors", "source", "scorer", "accuracy", "n", "n_skipped"])
    overall = pd.DataFrame([("overall", "all", "control", "random control", 0.5, 6),
                            ("overall", "all", "readout", "fitted readout", 0.75, 6)],
                           columns=["level", "group", "source", "scorer", "accuracy", "n"])
    return agree, overall


def test_agreement_blimp_findings_by_hand():
    agree, overall = _accuracy_tables()
    assert mp.pooled_accuracy(agree, "readout") == pytest.approx(0.6)  # (0.5 * 4 + 1.0 * 1) / 5; the empty row adds 0
    assert np.isnan(mp.pooled_accuracy(agree, "mlm"))
    f = mp.findings(agree, overall)
    assert list(f["sources"]) == ["readout", "control"]  # the control last
    assert f["sources"]["control"] == {"label": "random control", "agreement": 0.2, "n_agreement": 5,
                                       "blimp": 0.5, "n_blimp": 6}
    assert mp.key_numbers(f) == {}  # no MLM head: no headline numbers
    lines = mp.findings_text(f, "tiny")
    assert lines[0].startswith("**tiny has no masked-LM head**") and "fitted readout and a random-init control" in lines[0]
    assert lines[1] == ("**Agreement / BLiMP, fitted readout** (readout): agreement accuracy 0.600 over 5 items, "
                        "BLiMP 0.750 over 6 pairs.")
    assert len(lines) == 3
    only_control = mp.findings(agree[agree.source == "control"], overall)
    assert "only the random-init control was scored" in mp.findings_text(only_control, "tiny")[0]
    # the model's own head: headline numbers, no warning line, and the shuffled-context line
    mlm_agree, mlm_overall = agree.replace({"readout": "mlm"}), overall.replace({"readout": "mlm"})
    shuffled = pd.DataFrame({"dataset": ["g", "g"], "perturbation": ["intact", "shuffled"], "accuracy": [0.6, 0.4]})
    f = mp.findings(mlm_agree, mlm_overall, shuffled)
    assert mp.key_numbers(f) == {"agreement accuracy (MLM head)": pytest.approx(0.6), "BLiMP accuracy (MLM head)": 0.75}
    lines = mp.findings_text(f, "tiny")
    assert lines[0].startswith("**Agreement / BLiMP, fitted readout** (the model's MLM head)")
    assert lines[-1] == "**Agreement with shuffled context words** (mask in place, model MLM head): g: 0.600 → 0.400"


def _run(tmp_path, has_mlm_head=True):
    """A notebook run (bertology.notebook.Run) that only records: no model behind it."""
    from types import SimpleNamespace

    from bertology.notebook import Run

    loaded = SimpleNamespace(info=SimpleNamespace(has_mlm_head=has_mlm_head, name="m"))
    return Run("04_syntax_probes", loaded, tmp_path, 3, True, "cpu", {"notes": [], "deviations": []})


def test_agreement_and_blimp_studies_are_their_parts(scorer, tmp_path):
    run = _run(tmp_path)
    ag = mp.agreement_study(run, [scorer, scorer], limit=4, selection="all", data="stimuli", progress=False)
    items, _ = mp.agreement_items("stimuli", limit=4, selection="all")
    one = mp.score_agreement(scorer, items, progress=False)
    assert ag.scored.equals(pd.concat([one, one], ignore_index=True)) and len(ag.scored) == 8
    assert list(ag.tables) == ["accuracy", "by_condition", "skipped"]
    assert ag.tables["accuracy"].equals(mp.agreement_tables(ag.scored, "mlm")["accuracy"])
    assert run.meta["methods"]["goldberg.agreement"] == {"agreement_selection": "all"}
    blimp = mp.blimp_study(run, [scorer], limit=2, data="stimuli", progress=False)
    pairs, _ = mp.blimp_pairs("stimuli")
    assert list(blimp) == ["paradigm", "phenomenon", "overall"]
    assert blimp["overall"].equals(mp.blimp_tables(mp.score_blimp(scorer, pairs, progress=False))["overall"])
    assert run.values["blimp_pairs"] == mp.blimp_sizes(pairs, 2)
    assert run.meta["methods"]["blimp.pll"] == {"blimp_grouping": "mlm-scoring"}
    assert run.meta["notes"] == []  # the stimuli were asked for: nothing fell back


def test_blimp_study_cuts_only_the_control(scorer, tmp_path):
    import copy

    run = _run(tmp_path)
    control = copy.copy(scorer)
    control.source, control.label = "control", "random-init control"
    blimp = mp.blimp_study(run, [scorer, control], data="stimuli", control_limit=1, progress=False)
    pairs, _ = mp.blimp_pairs("stimuli")
    first = pairs.groupby("paradigm", sort=False).head(1)
    assert len(first) == pairs["paradigm"].nunique() < len(pairs)
    # the model scores every pair, the control the first pair of each paradigm: the same numbers as by hand
    by_hand = mp.blimp_tables(pd.concat([mp.score_blimp(scorer, pairs, progress=False),
                                         mp.score_blimp(control, first, progress=False)], ignore_index=True))
    pd.testing.assert_frame_equal(blimp["overall"], by_hand["overall"])
    n = blimp["overall"].set_index("source")["n"]
    assert n["control"] == len(first) and n[scorer.source] == len(pairs)
    assert run.values["blimp_pairs"] == {**mp.blimp_sizes(pairs, None), "n_pairs_control": len(first)}
    assert any(note.startswith("BLiMP: the random-init control scored the first 1 pairs") for note in run.meta["notes"])
    # without a control among the scorers nothing is cut or noted
    run2 = _run(tmp_path)
    mp.blimp_study(run2, [scorer], data="stimuli", control_limit=1, progress=False)
    assert run2.values["blimp_pairs"] == mp.blimp_sizes(pairs, None) and run2.meta["notes"] == []


def test_shuffled_agreement_needs_the_models_own_head(scorer, tmp_path):
    s = mp.score_agreement(scorer, items(), progress=False)
    run = _run(tmp_path)
    assert mp.shuffled_agreement(run, scorer, s).equals(mp.agreement_under_shuffling(scorer, s, seed=3))
    run = _run(tmp_path, has_mlm_head=False)
    assert mp.shuffled_agreement(run, scorer, s) is None
    assert run.meta["notes"] == ["Agreement under perturbation needs the model's own MLM head; skipped for this model."]


def test_check_parameters_names_the_parameter():
    from bertology.notebook import ParameterError

    mp.check_parameters("all", "linguistics_term")  # fine
    with pytest.raises(ParameterError, match="'agreement_selection'"):
        mp.check_parameters("some")
    with pytest.raises(ParameterError, match="'blimp_grouping'"):
        mp.check_parameters(blimp_grouping="field")
