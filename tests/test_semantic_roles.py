"""Ettinger (2020) measures and the selectional-preference suite, on hand-made items and a tiny MLM."""
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch

from bertology import cloze
from bertology import semantic_roles as sr
from bertology.models import random_bert


def _scored(rows):
    cols = ["source", "suite", "variant", "item", "condition", "target", "logprob", "accuracy_row", "expected_rank"]
    df = pd.DataFrame(rows, columns=cols)
    df["prob"] = np.exp(df["logprob"])
    return df


def test_accuracy_at_k_counts_expected_rank_and_multi_piece_as_miss():
    df = _scored([
        ("mlm", "CPRAG", "original", "0", "exp", "chess", -1.0, True, 1),
        ("mlm", "CPRAG", "original", "1", "exp", "cake", -2.0, True, 4),
        ("mlm", "CPRAG", "original", "2", "exp", "zebra", -3.0, True, 9),
        ("mlm", "CPRAG", "original", "3", "exp", "monopoly", np.nan, True, np.nan),
        ("mlm", "CPRAG", "original", "3", "wc", "chess", -5.0, False, np.nan),  # not an accuracy row
    ])
    acc = sr.accuracy_at_k(df, ks=(1, 5))
    got = {r.k: (r.accuracy, r.n) for r in acc.itertuples()}
    assert got == {1: (0.25, 4), 5: (0.5, 4)}


def test_sensitivity_cprag_role_neg_by_hand():
    rows = [
        # CPRAG item 0: exp beats wc but not bc -> "vs within" win, "vs both" loss
        ("mlm", "CPRAG", "original", "0", "exp", "a", math.log(0.30), True, 1),
        ("mlm", "CPRAG", "original", "0", "wc", "b", math.log(0.20), False, 2),
        ("mlm", "CPRAG", "original", "0", "bc", "c", math.log(0.40), False, 1),
        # CPRAG item 1: exp beats both by more than 0.01
        ("mlm", "CPRAG", "original", "1", "exp", "a", math.log(0.50), True, 1),
        ("mlm", "CPRAG", "original", "1", "wc", "b", math.log(0.10), False, 2),
        ("mlm", "CPRAG", "original", "1", "bc", "c", math.log(0.05), False, 3),
        # ROLE pair 61: canonical wins by 0.005 only (counts, but not above the threshold)
        ("mlm", "ROLE", "original", "61", "a", "x", math.log(0.015), True, 3),
        ("mlm", "ROLE", "original", "61", "b", "x", math.log(0.010), True, 5),
        # NEG item 0: affirmative right, negated wrong (the famous failure)
        ("mlm", "NEG-SIMP", "original", "0", "TA", "bird", math.log(0.6), True, 1),
        ("mlm", "NEG-SIMP", "original", "0", "FA", "tree", math.log(0.1), False, 9),
        ("mlm", "NEG-SIMP", "original", "0", "TN", "tree", math.log(0.1), False, 9),
        ("mlm", "NEG-SIMP", "original", "0", "FN", "bird", math.log(0.5), False, 1),
    ]
    pairs = sr.sensitivity_pairs(_scored(rows))
    s = sr.sensitivity(pairs).set_index(["suite", "comparison"])
    assert s.loc[("CPRAG", "expected vs within"), "sensitivity"] == 1.0
    assert s.loc[("CPRAG", "expected vs both"), "sensitivity"] == 0.5
    assert s.loc[("CPRAG", "expected vs both"), "n"] == 2
    assert s.loc[("ROLE", "canonical vs reversed"), "sensitivity"] == 1.0
    assert s.loc[("ROLE", "canonical vs reversed"), "sensitivity_thresh"] == 0.0
    assert s.loc[("NEG-SIMP", "affirmative"), "sensitivity"] == 1.0
    assert s.loc[("NEG-SIMP", "negated"), "sensitivity"] == 0.0
    worst = pairs[(pairs["item"] == "0") & (pairs["comparison"] == "expected vs both")].iloc[0]
    assert worst["bad"] == "c"  # the stronger of the two bad completions


def test_out_of_vocabulary_targets_count_as_wrong_by_default_and_drop_on_request():
    # Ettinger's sensitivity_tests: P(good) > P(bad) is False when either is NaN -> a loss, kept in n.
    rows = [
        ("mlm", "ROLE", "original", "1", "a", "x", math.log(0.2), True, 1),
        ("mlm", "ROLE", "original", "1", "b", "x", math.log(0.1), True, 2),
        ("mlm", "ROLE", "original", "2", "a", "mimicked", np.nan, True, np.nan),
        ("mlm", "ROLE", "original", "2", "b", "mimicked", np.nan, True, np.nan),
        # CPRAG: expected beats wc, but bc has no probability -> "expected vs both" fails
        ("mlm", "CPRAG", "original", "0", "exp", "a", math.log(0.5), True, 1),
        ("mlm", "CPRAG", "original", "0", "wc", "b", math.log(0.1), False, 7),
        ("mlm", "CPRAG", "original", "0", "bc", "scuba-diving", np.nan, False, np.nan),
        ("mlm", "CPRAG", "original", "1", "exp", "a", math.log(0.5), True, 1),
        ("mlm", "CPRAG", "original", "1", "wc", "b", math.log(0.1), False, 7),
        ("mlm", "CPRAG", "original", "1", "bc", "c", math.log(0.2), False, 3),
    ]
    pairs = sr.sensitivity_pairs(_scored(rows))
    wrong = sr.sensitivity(pairs).set_index(["suite", "comparison"])
    assert tuple(wrong.loc[("ROLE", "canonical vs reversed"), ["sensitivity", "n", "n_oov", "n_dropped"]]) == (0.5, 2, 1, 0)
    assert wrong.loc[("CPRAG", "expected vs both"), "sensitivity"] == 0.5
    assert wrong.loc[("CPRAG", "expected vs both"), "sensitivity_thresh"] == 0.5
    drop = sr.sensitivity(pairs, oov="drop").set_index(["suite", "comparison"])
    assert tuple(drop.loc[("ROLE", "canonical vs reversed"), ["sensitivity", "n", "n_oov", "n_dropped"]]) == (1.0, 1, 1, 1)
    assert drop.loc[("CPRAG", "expected vs both"), "sensitivity"] == 1.0
    # accuracy: an expected word with no rank is a miss (wrong) or left out (drop)
    acc = _scored([r for r in rows if r[1] == "ROLE"])
    w = sr.accuracy_at_k(acc, ks=(1,)).iloc[0]
    d = sr.accuracy_at_k(acc, ks=(1,), oov="drop").iloc[0]
    assert (w["accuracy"], w["n"], w["n_oov"]) == (0.25, 4, 2)
    assert (d["accuracy"], d["n"], d["n_oov"]) == (0.5, 2, 2)
    with pytest.raises(ValueError, match="oov"):
        sr.sensitivity(pairs, oov="skip")


def test_queries_articles_perturbations_and_determinism():
    neg = pd.DataFrame([{"item": "2", "context_aff": "An ant is (a|an)", "context_neg": "An ant is not (a|an)",
                         "target_aff": "insect", "target_neg": "vegetable"}])
    cp = pd.DataFrame([{"item": "0", "context_s1": "The cat sat on the warm mat.", "context_s2": "Then it fell fast asleep on the",
                        "expected": "sofa", "within_category": "bed", "between_category": "car", "constraint": "H"}])
    q = sr.ettinger_queries({"NEG-SIMP": neg, "CPRAG": cp}, seed=3)
    n = q[q.suite == "NEG-SIMP"].set_index("condition")
    # Ettinger's process_negsimp: "(a|an)" removed, the completion's article and the mask appended;
    # her prep_input then appends " ." after the mask
    assert n.loc["TA", "context"] == "An ant is an [MASK] ." and n.loc["FA", "context"] == "An ant is a [MASK] ."
    assert n.loc["TN", "context"] == "An ant is not a [MASK] ." and n.loc["TN", "target"] == "vegetable"
    assert list(n["accuracy_row"]) == [True, False, False, False]
    e = q[(q.suite == "CPRAG") & (q.condition == "exp")]
    c = e[e["draw"] == 0].set_index("variant")["context"]
    assert c["original"] == "The cat sat on the warm mat. Then it fell fast asleep on the [MASK] ."
    assert c["truncated"] == "The cat sat on the warm mat. on the [MASK] ."
    shuffled = c["shuffled"].split(". ")[0].split()
    assert sorted(shuffled) == sorted("The cat sat on the warm mat".split())
    assert c["shuffled"].endswith(". Then it fell fast asleep on the [MASK] .")
    # one shuffle per item and draw, shared by shuffled and shuffled+truncated (her process_fk)
    assert c["shuffled+truncated"] == c["shuffled"].split(". ")[0] + ". on the [MASK] ."
    assert e.groupby("variant")["draw"].nunique().to_dict() == {"original": 1, "shuffled": 3, "truncated": 1,
                                                                 "shuffled+truncated": 3}
    draws = e[e["variant"] == "shuffled"]["context"]
    assert draws.nunique() > 1  # three different shuffles of seven words
    assert sr.ettinger_queries({"CPRAG": cp}, seed=3).equals(sr.ettinger_queries({"CPRAG": cp}, seed=3))
    old = sr.ettinger_queries({"CPRAG": cp}, perturbations=("original",), final_period=False)
    assert old["context"].iloc[0] == "The cat sat on the warm mat. Then it fell fast asleep on the [MASK]"
    with pytest.raises(ValueError, match="perturbation"):
        sr.perturb_cprag("a b.", "c d", "reversed", random.Random(0))


def test_loaders_name_the_problem(tmp_path):
    bad = tmp_path / "role.tsv"
    bad.write_text("item\tcontext\texpected\texp_cloze\ttarget\ttgt_cloze\n61\tthe x had \tmet\t0.5\tmet\t0.5\n")
    with pytest.raises(sr.StimulusError, match="'61'"):
        sr.load_suite("ROLE", bad)
    short = tmp_path / "cprag.tsv"
    short.write_text("item\tcontext_s1\n0\tx\n")
    with pytest.raises(sr.StimulusError, match="missing column"):
        sr.load_suite("CPRAG", short)
    two = tmp_path / "sp.tsv"
    two.write_text("verb\tcontext\ttypical\tatypical\timplausible\ntip\t[MASK] tipped the [MASK]\twaiter\tchef\trobin\n")
    with pytest.raises(sr.StimulusError, match="exactly one"):
        sr.load_selectional_preferences(two)
    with pytest.raises(ValueError, match="unknown suite"):
        sr.load_suite("BLIMP")


def test_shipped_stimuli_are_single_pieces(tokenizer):
    sp = sr.load_selectional_preferences()
    assert len(sp) >= 30 and sp["verb"].is_unique
    for c in sr.PLAUSIBILITY:
        assert all(len(cloze.word_pieces(tokenizer, w)) == 1 for w in sp[c]), c
    for suite in ("CPRAG", "NEG-SIMP"):
        d = sr.load_own_suite(suite)
        words = d[[c for c in d.columns if c.startswith(("expected", "within", "between", "target"))]].to_numpy().ravel()
        assert len(d) >= 8 and all(len(cloze.word_pieces(tokenizer, w)) == 1 for w in words)


def test_rank_agreement_by_hand():
    rows = []
    for item, lps in {"tip": (-1, -2, -3), "eat": (-3, -2, -1), "read": (-1, -3, -2), "cut": (-1, np.nan, -2)}.items():
        for cls, lp in zip(sr.PLAUSIBILITY, lps):
            rows.append(dict(source="readout", item=item, condition=cls, logprob=lp))
    ag = sr.rank_agreement(pd.DataFrame(rows)).set_index("item")
    assert ag.loc["tip", "kendall_tau"] == 1 and ag.loc["tip", "exact"]
    assert ag.loc["eat", "kendall_tau"] == -1 and not ag.loc["eat", "exact"]
    assert ag.loc["read", "kendall_tau"] == pytest.approx(1 / 3)
    assert (ag.loc["read", "rank_typical"], ag.loc["read", "rank_atypical"], ag.loc["read", "rank_implausible"]) == (1, 3, 2)
    s = sr.rank_agreement_summary(ag.reset_index()).set_index("metric")
    assert s.loc["typical > atypical", "value"] == pytest.approx(2 / 3)
    assert s.loc["atypical > implausible", "value"] == pytest.approx(1 / 3)
    assert s.loc["exact order", "value"] == pytest.approx(1 / 3)
    assert s.loc["exact order", "n_dropped"] == 1


@pytest.fixture(scope="module")
def tiny_scorer(tokenizer):
    return cloze.control_scorer(random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, seed=3), seed=5)


def test_context_cloze_matches_the_engine_and_a_hand_computation(tiny_scorer):
    ctx = ["the cat sat on the [MASK] .", "a robin is a [MASK]", "she drank a glass of [MASK] today ."]
    words = [["mat", "dog", "applauded"], ["bird"], ["water", "milk"]]
    mine = sr.context_cloze(tiny_scorer, ctx, words, k=5, batch_size=2)
    ref = cloze.cloze(tiny_scorer, ctx, words, k=5, multi_piece="skip")
    pd.testing.assert_frame_equal(mine.targets, ref.targets, check_exact=False, rtol=1e-5, atol=1e-5)
    assert mine.top["token"].tolist() == ref.top["token"].tolist()
    assert mine.n_skipped == ref.n_skipped == 1
    # by hand: log-softmax of the model's logits at the mask
    tok = tiny_scorer.tokenizer
    enc = tok("a robin is a " + tok.mask_token, return_tensors="pt")
    with torch.inference_mode():
        logits = tiny_scorer.loaded.model(**enc).logits[0]
    pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero())
    want = torch.log_softmax(logits[pos], -1)[tok.convert_tokens_to_ids("bird")].item()
    got = mine.targets.query("item == 1")["logprob"].item()
    assert got == pytest.approx(want, abs=1e-5)


def test_score_queries_fills_ranks_and_expected(tiny_scorer):
    role = pd.DataFrame([{"item": "1-a", "context": "which customer the waitress had", "expected": "served|tipped",
                          "exp_cloze": 0.3, "target": "served", "tgt_cloze": 0.3, "pair": "1", "condition": "a"},
                         {"item": "1-b", "context": "which waitress the customer had", "expected": "tipped",
                          "exp_cloze": 0.2, "target": "served", "tgt_cloze": 0.0, "pair": "1", "condition": "b"}])
    q = sr.ettinger_queries({"ROLE": role})
    scored, top = sr.score_queries(tiny_scorer, q, k=3, exclude_special=True)
    assert set(scored["source"]) == {"control"} and len(top) == 2 * 3
    ref = cloze.cloze(tiny_scorer, list(q["context"]), [["served", "tipped"]] * 2, k=0)
    r = ref.targets
    a = scored.iloc[0]
    assert a["rank"] == r.query("item == 0 and target == 'served'")["rank"].item()
    assert a["expected_rank"] == r.query("item == 0")["rank"].min()
    assert scored.iloc[1]["expected_rank"] == r.query("item == 1 and target == 'tipped'")["rank"].item()


def test_offline_falls_back_to_shipped_stimuli(monkeypatch):
    import bertology.data as data

    def unavailable(dataset, file):
        raise data.DataUnavailableError(f"cannot get {dataset}/{file}: offline")

    monkeypatch.setattr(data, "data_path", unavailable)
    suites, origin = sr.load_ettinger()
    assert origin == "shipped" and set(suites) == {"CPRAG", "NEG-SIMP"}
    with pytest.raises(data.DataUnavailableError):
        sr.load_ettinger(fallback=False)
    q = sr.ettinger_queries(suites)
    assert set(q["suite"]) == {"CPRAG", "NEG-SIMP"} and q["context"].str.count(r"\[MASK\]").eq(1).all()


def _reference_input_ids(tok, masked_context):
    """Ettinger's access_model.prep_input, re-done by hand: [CLS] + whitespace words + '.' when the
    last word is not one + [SEP], joined by spaces, tokenized, converted to ids."""
    words = ["[CLS]"] + masked_context.strip().split()
    if words[-1] != ".":
        words.append(".")
    words.append("[SEP]")
    return tok.convert_tokens_to_ids(tok.tokenize(" ".join(words)))


def test_model_input_is_context_mask_period_as_in_her_code(tokenizer):
    contexts = ["“Checkmate,” Rosaline announced with glee. She was getting to be really good at",
                "The librarian documented which celebrities the journalist had ", "A robin is not a"]
    for c in contexts:
        text = sr.ettinger_input(c)
        assert text.endswith("[MASK] .")
        ours = tokenizer(text)["input_ids"]
        assert ours == _reference_input_ids(tokenizer, c + " [MASK]")
        # the old input (no final period) is a different sequence
        assert tokenizer(sr.ettinger_input(c, final_period=False))["input_ids"] != ours
    assert sr.ettinger_input("A robin is a") == "A robin is a [MASK] ."


def test_probability_is_read_at_the_mask_of_the_period_input(tiny_scorer):
    tok = tiny_scorer.tokenizer
    role = pd.DataFrame([{"item": "1-a", "context": "which customer the waitress had", "expected": "served",
                          "exp_cloze": 0.3, "target": "served", "tgt_cloze": 0.3, "pair": "1", "condition": "a"}])
    for final_period in (True, False):
        q = sr.ettinger_queries({"ROLE": role}, final_period=final_period)
        scored, top = sr.score_queries(tiny_scorer, q, k=5)
        ids = _reference_input_ids(tok, "which customer the waitress had [MASK]") if final_period else \
            tok("which customer the waitress had [MASK]")["input_ids"]
        ids = torch.tensor([ids])
        with torch.inference_mode():
            logits = tiny_scorer.loaded.model(input_ids=ids).logits[0]
        pos = int((ids[0] == tok.mask_token_id).nonzero())
        lp = torch.log_softmax(logits[pos], -1)
        served = tok.convert_tokens_to_ids("served")
        assert scored["logprob"].iloc[0] == pytest.approx(lp[served].item(), abs=1e-5)
        # rank and top-k over the whole vocabulary, special tokens included (her get_predictions)
        assert scored["rank"].iloc[0] == 1 + int((lp > lp[served]).sum())
        assert top["token"].tolist() == tok.convert_ids_to_tokens(lp.topk(5).indices.tolist())
        if final_period:
            with_period = lp[served].item()
        else:
            assert lp[served].item() != pytest.approx(with_period, abs=1e-6)


def test_exclude_special_ranks_among_non_special_tokens_only(tiny_scorer):
    tok = tiny_scorer.tokenizer
    res_all = sr.context_cloze(tiny_scorer, ["a [MASK] ."], [["bird"]], k=0, special_tokens=True)
    res_words = sr.context_cloze(tiny_scorer, ["a [MASK] ."], [["bird"]], k=0)
    ids = torch.tensor([tok("a [MASK] .")["input_ids"]])
    with torch.inference_mode():
        lp = torch.log_softmax(tiny_scorer.loaded.model(input_ids=ids).logits[0, 2], -1)
    b = lp[tok.convert_tokens_to_ids("bird")]
    special = torch.zeros_like(lp, dtype=torch.bool)
    special[tok.all_special_ids] = True
    assert res_all.targets["rank"].item() == 1 + int((lp > b).sum())
    assert res_words.targets["rank"].item() == 1 + int(((lp > b) & ~special).sum())


def test_role_argument_removal_as_in_her_process_rr():
    c = "The librarian documented which celebrities the journalist had "
    # her gen_obj / gen_subj substitutions worked out by hand on this item
    assert sr.perturb_role(c, "original") == "The librarian documented which celebrities the journalist had"
    assert sr.perturb_role(c, "object removed") == "The librarian documented which one the journalist had"
    assert sr.perturb_role(c, "subject removed") == "The librarian documented which celebrities the other had"
    assert sr.perturb_role(c, "both removed") == "The librarian documented which one the other had"
    c2 = "the restaurant owner forgot which customer the head waitress had"
    assert sr.perturb_role(c2, "subject removed") == "the restaurant owner forgot which customer the other had"
    with pytest.raises(sr.StimulusError, match="which"):
        sr.perturb_role("a robin is a", "object removed")
    role = pd.DataFrame([{"item": "61-a", "context": c, "expected": "interviewed", "exp_cloze": 0.5,
                          "target": "interviewed", "tgt_cloze": 0.5, "pair": "61", "condition": "a"}])
    q = sr.ettinger_queries({"ROLE": role}, role_perturbations=sr.ROLE_PERTURBATIONS)
    assert q.set_index("variant")["context"]["both removed"] == "The librarian documented which one the other had [MASK] ."


def test_summary_averages_shuffle_draws_with_population_sd():
    acc = pd.DataFrame([dict(source="mlm", suite="CPRAG", variant="shuffled", draw=d, k=5, accuracy=a, n=34, n_oov=0)
                        for d, a in enumerate((0.2, 0.4, 0.6))]
                       + [dict(source="mlm", suite="CPRAG", variant="original", draw=0, k=5, accuracy=0.5, n=34, n_oov=0)])
    sens = pd.DataFrame([dict(source="mlm", suite="CPRAG", variant="shuffled", draw=d, comparison="expected vs both",
                              sensitivity=v, sensitivity_thresh=v / 2, n=34, n_oov=0, n_dropped=0)
                         for d, v in enumerate((0.5, 0.7, 0.9))])
    s = sr.ettinger_summary(acc, sens).set_index(["variant", "metric"])
    # mean and numpy's default (population) standard deviation, as her run_aux_tests prints
    assert s.loc[("shuffled", "accuracy@5"), "value"] == pytest.approx(0.4)
    assert s.loc[("shuffled", "accuracy@5"), "sd"] == pytest.approx(math.sqrt((0.2 ** 2 + 0 + 0.2 ** 2) / 3))
    assert s.loc[("shuffled", "accuracy@5"), "draws"] == 3
    assert s.loc[("original", "accuracy@5"), "sd"] == 0 and s.loc[("original", "accuracy@5"), "draws"] == 1
    assert s.loc[("shuffled", "sensitivity: expected vs both"), "value"] == pytest.approx(0.7)
    assert s.loc[("shuffled", "sensitivity (>0.01): expected vs both"), "value"] == pytest.approx(0.35)


def test_declared_deviations_follow_the_options():
    from bertology import fidelity

    faithful = fidelity.lines("ettinger", final_period=True, oov="wrong", exclude_special=False, shuffle_draws=3)
    ours = fidelity.lines("ettinger", final_period=False, oov="drop", exclude_special=True, shuffle_draws=3)
    assert not any("[MASK] [SEP]" in t or "dropped" in t or "non-special" in t for t in faithful)
    assert sum("[MASK] [SEP]" in t for t in ours) == 1 and any("oov='drop'" in t for t in ours)
    assert any("non-special" in t for t in ours)
    assert any("3 seeded draws" in t for t in faithful)


def test_sensitivity_by_constraint_and_licensing_as_she_reports():
    rows = []
    # CPRAG: high-constraint item 0 right, high item 1 wrong, low item 2 right
    for item, cons, (e, w, b) in (("0", "H", (0.5, 0.1, 0.1)), ("1", "H", (0.1, 0.5, 0.1)), ("2", "L", (0.3, 0.2, 0.1))):
        for cond, p in (("exp", e), ("wc", w), ("bc", b)):
            rows.append(dict(source="mlm", suite="CPRAG", variant="original", draw=0, item=item, condition=cond,
                             target=cond, prob=p, logprob=math.log(p), constraint=cons))
    # NEG-NAT: licensed item 0 right in both polarities; unlicensed item 1 right only when affirmative
    for item, lic, (ta, fa, tn, fn) in (("0", "Y", (0.4, 0.1, 0.3, 0.2)), ("1", "N", (0.4, 0.1, 0.1, 0.3))):
        for cond, p in (("TA", ta), ("FA", fa), ("TN", tn), ("FN", fn)):
            rows.append(dict(source="mlm", suite="NEG-NAT", variant="original", draw=0, item=item, condition=cond,
                             target=cond, prob=p, logprob=math.log(p), licensing=lic))
    g = sr.sensitivity_by_group(sr.sensitivity_pairs(pd.DataFrame(rows))).set_index(["comparison", "group"])
    assert g.loc[("expected vs both", "constraint H"), "sensitivity"] == 0.5
    assert g.loc[("expected vs both", "constraint L"), "sensitivity"] == 1.0
    assert g.loc[("negated", "licensing Y"), "sensitivity"] == 1.0
    assert g.loc[("negated", "licensing N"), "sensitivity"] == 0.0
    assert g.loc[("affirmative", "licensing N"), "sensitivity"] == 1.0
