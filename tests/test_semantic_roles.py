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


def test_sensitivity_drops_and_counts_multi_piece_pairs():
    rows = [
        ("mlm", "ROLE", "original", "1", "a", "x", math.log(0.2), True, 1),
        ("mlm", "ROLE", "original", "1", "b", "x", math.log(0.1), True, 2),
        ("mlm", "ROLE", "original", "2", "a", "mimicked", np.nan, True, np.nan),
        ("mlm", "ROLE", "original", "2", "b", "mimicked", np.nan, True, np.nan),
    ]
    s = sr.sensitivity(sr.sensitivity_pairs(_scored(rows))).iloc[0]
    assert (s["sensitivity"], s["n"], s["n_dropped"]) == (1.0, 1, 1)


def test_queries_articles_perturbations_and_determinism():
    neg = pd.DataFrame([{"item": "2", "context_aff": "An ant is (a|an)", "context_neg": "An ant is not (a|an)",
                         "target_aff": "insect", "target_neg": "vegetable"}])
    cp = pd.DataFrame([{"item": "0", "context_s1": "The cat sat on the warm mat.", "context_s2": "Then it fell fast asleep on the",
                        "expected": "sofa", "within_category": "bed", "between_category": "car", "constraint": "H"}])
    q = sr.ettinger_queries({"NEG-SIMP": neg, "CPRAG": cp}, seed=3)
    n = q[q.suite == "NEG-SIMP"].set_index("condition")
    assert n.loc["TA", "context"] == "An ant is an [MASK]" and n.loc["FA", "context"] == "An ant is a [MASK]"
    assert n.loc["TN", "context"] == "An ant is not a [MASK]" and n.loc["TN", "target"] == "vegetable"
    assert list(n["accuracy_row"]) == [True, False, False, False]
    c = q[(q.suite == "CPRAG") & (q.condition == "exp")].set_index("variant")["context"]
    assert c["original"] == "The cat sat on the warm mat. Then it fell fast asleep on the [MASK]"
    assert c["truncated"] == "The cat sat on the warm mat. on the [MASK]"
    shuffled = c["shuffled"].split(". ")[0].split()
    assert sorted(shuffled) == sorted("The cat sat on the warm mat".split())
    assert c["shuffled"].endswith(". Then it fell fast asleep on the [MASK]")
    assert sr.ettinger_queries({"CPRAG": cp}, seed=3).equals(sr.ettinger_queries({"CPRAG": cp}, seed=3))
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
    scored, top = sr.score_queries(tiny_scorer, q, k=3)
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
