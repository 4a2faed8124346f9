"""LAMA P@k, negation overlap and the Forbes et al. (2019) probes, on hand-made predictions and data."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bertology import cloze
from bertology import knowledge as kn
from bertology.models import random_bert

MIRROR = Path(os.environ.get("BERTOLOGY_DATA", "/nonexistent"))


def _line(**kw):
    rec = {"sub_label": "Dante", "obj_label": "Florence", "masked_sentences": ["Dante was born in [MASK] ."],
           "masked_negations": ["Dante was  not born in [MASK] ."], "uuid": 1,
           "masked_misprimed": ["Talk? Dante was born in [MASK] ."]}
    rec.update(kw)
    return json.dumps(rec)


def test_parse_lama_lines_relation_names_and_errors():
    f = kn.parse_lama_lines([_line(), "", _line(uuid=2, obj_label="Rome")], "TREx", "data/TREx/random/P19_random.jsonl")
    assert list(f["relation"]) == ["P19", "P19"] and set(f["corpus"]) == {"T-REx"}
    assert f.loc[0, "negated"] == "Dante was not born in [MASK] ."  # whitespace normalised
    g = kn.parse_lama_lines([_line(pred="CapableOf")], "ConceptNet", "data/ConceptNet/random/ConceptNet.jsonl")
    assert g.loc[0, "relation"] == "ConceptNet" and g.loc[0, "predicate"] == "CapableOf"  # LAMA: one relation
    with pytest.raises(kn.KnowledgeDataError, match=r"P19_random.jsonl:2.*masked_negations"):
        kn.parse_lama_lines([_line(), _line(masked_negations=["no mask here"])], "TREx", "data/TREx/random/P19_random.jsonl")
    with pytest.raises(kn.KnowledgeDataError, match="x.jsonl:1: not JSON"):
        kn.parse_lama_lines(["{oops"], "TREx", "x.jsonl")


def test_precision_at_k_and_macro_average_by_hand():
    ranks = pd.DataFrame({
        "source": "mlm", "corpus": ["T-REx"] * 4 + ["SQuAD"], "relation": ["P19", "P19", "P19", "P36", "squad"],
        "query": "original", "rank": [1, 3, 20, 1, np.nan]})
    per = kn.precision_at_k(ranks, ks=(1, 10))
    p = per.set_index(["relation", "k"])["precision"]
    assert p[("P19", 1)] == pytest.approx(1 / 3) and p[("P19", 10)] == pytest.approx(2 / 3)
    assert p[("P36", 1)] == 1.0 and p[("squad", 10)] == 0.0
    macro = kn.macro_by_corpus(per).set_index(["corpus", "k"])
    assert macro.loc[("T-REx", 1), "value"] == pytest.approx((1 / 3 + 1) / 2)  # macro, not micro (2/4)
    assert macro.loc[("T-REx", 10), "value"] == pytest.approx((2 / 3 + 1) / 2)
    assert macro.loc[("T-REx", 1), "n_relations"] == 2 and macro.loc[("T-REx", 1), "n_facts"] == 4


def test_negation_overlap_by_hand():
    facts = pd.DataFrame({"corpus": "T-REx", "relation": "P19", "uuid": ["1", "2"], "obj_label": ["Paris", "Rome"],
                          "misprimed": ["Talk? x [MASK] .", "Bird? y [MASK] ."]})
    top = pd.DataFrame([
        ("mlm", "T-REx", "P19", "1", "original", 1, "paris", -1.0), ("mlm", "T-REx", "P19", "1", "negated", 1, "paris", -1.0),
        ("mlm", "T-REx", "P19", "1", "misprimed", 1, "talk", -1.0), ("mlm", "T-REx", "P19", "2", "original", 1, "milan", -1.0),
        ("mlm", "T-REx", "P19", "2", "negated", 1, "rome", -1.0), ("mlm", "T-REx", "P19", "2", "misprimed", 1, "milan", -1.0),
        ("mlm", "T-REx", "P19", "2", "original", 2, "rome", -2.0),
    ], columns=["source", "corpus", "relation", "uuid", "query", "rank", "token", "logprob"])
    m = kn.negation_overlap(top, facts).set_index("metric")["value"]
    assert m["same top-1 as original"] == 0.5
    assert m["negated top-1 is the true object"] == 1.0
    assert m["misprime is top-1"] == 0.5 and m["misprime changed top-1"] == 0.5
    assert m["two facts share top-1 (baseline)"] == 0.0  # paris vs milan


def test_single_piece_facts_counts_drops(tokenizer):
    facts = pd.DataFrame({"corpus": "T-REx", "relation": ["P1", "P1", "P2"], "obj_label": ["Paris", "Reykjavíkurborg", "French"]})
    kept, counts = kn.single_piece_facts(facts, tokenizer, kn.candidate_vocab(tokenizer))
    assert list(kept["obj_label"]) == ["Paris", "French"]
    c = counts.set_index("relation")
    assert (c.loc["P1", "n_facts"], c.loc["P1", "n_kept"], c.loc["P1", "n_dropped"]) == (2, 1, 1)
    vocab = kn.candidate_vocab(tokenizer)
    assert "paris" in vocab and not any(v.startswith("##") or v in ("[MASK]", "[unused0]") for v in vocab)


def test_score_lama_ranks_over_vocab(tokenizer):
    scorer = cloze.control_scorer(random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, seed=1), seed=2)
    facts = kn.load_own_facts().head(4)
    vocab = ["paris", "rome", "tokyo", "berlin", "french", "the", "a"]
    ranks, top = kn.score_lama(scorer, facts, vocab=vocab, k=3)
    assert len(ranks) == 4 * 3 and set(ranks["query"]) == set(kn.QUERIES)
    assert ranks["rank"].between(1, len(vocab)).all()
    assert set(top["token"]) <= set(vocab) and len(top) == 4 * 3 * 3
    ref = cloze.cloze(scorer, list(facts["original"]), [[o] for o in facts["obj_label"]], k=0, vocab=vocab)
    orig = ranks[ranks["query"] == "original"]
    assert list(orig["rank"]) == list(ref.targets["rank"])
    np.testing.assert_allclose(orig["logprob"], ref.targets["logprob"], atol=1e-5)


def test_shipped_facts_are_single_pieces(tokenizer):
    facts = kn.load_own_facts()
    kept, counts = kn.single_piece_facts(facts, tokenizer, kn.candidate_vocab(tokenizer))
    assert len(facts) >= 25 and len(kept) == len(facts) and facts["relation"].nunique() >= 5


@pytest.mark.skipif(not (MIRROR / kn.LAMA).is_dir(), reason="LAMA data mirror not available")
def test_load_lama_from_mirror_counts():
    f = kn.load_lama()
    assert len(f) == 11165
    # LAMA averages over relation files: ConceptNet and SQuAD are one file each
    assert f.groupby("corpus")["relation"].nunique().to_dict() == {"ConceptNet": 1, "Google-RE": 3, "SQuAD": 1, "T-REx": 40}
    by_pred = kn.load_lama(corpora=["ConceptNet"], conceptnet_by_predicate=True)
    assert by_pred["relation"].nunique() == 13 and len(by_pred) == 146
    s = kn.load_lama(facts_per_relation=5, seed=1)
    assert s.groupby("relation").size().max() == 5
    assert s.equals(kn.load_lama(facts_per_relation=5, seed=1))


def test_forbes_f1_by_hand():
    # object x: y 1 1 0, yhat 1 0 0 -> P 1, R 1/2 ; object z: y 0 1, yhat 1 1 -> P 1/2, R 1 ; object w: no positives
    a = ["x", "x", "x", "z", "z", "w"]
    b = ["p", "q", "r", "p", "q", "p"]
    y = [1, 1, 0, 0, 1, 0]
    yhat = [1, 0, 0, 1, 1, 1]
    s = kn.forbes_f1(a, b, y, yhat, ("object", "property"))
    mp, mr = (1 + 0.5) / 2, (0.5 + 1) / 2
    assert s["object"] == pytest.approx(2 * mp * mr / (mp + mr))
    # property p: y (1,0,0), yhat (1,1,1) -> P 1/3 R 1 ; q: y (1,1), yhat (0,1) -> P 1 R 1/2 ; r: no positives
    mp, mr = (1 / 3 + 1) / 2, (1 + 0.5) / 2
    assert s["property"] == pytest.approx(2 * mp * mr / (mp + mr))
    tp, fp, fn = 2, 2, 1
    assert s["micro"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["accuracy"] == pytest.approx(3 / 6)


def test_majority_baseline_by_category():
    train = pd.DataFrame({"a": ["x", "y", "z", "x"], "b": ["p", "p", "p", "q"], "label": [1, 1, 0, 0]})
    test = pd.DataFrame({"a": ["u", "u", "u"], "b": ["p", "q", "new"], "label": [1, 0, 1]})
    assert kn.majority_baseline(train, test).tolist() == [1, 0, 1]


def test_majority_baseline_tie_goes_to_the_first_label_seen():
    # Forbes's _maj_cat: Counter.most_common on a tie returns the label inserted first for that item
    train = pd.DataFrame({"a": ["x", "y", "x", "y", "x"], "b": ["p", "p", "q", "q", "r"], "label": [0, 1, 1, 0, 0]})
    test = pd.DataFrame({"a": ["u"] * 4, "b": ["p", "q", "r", "unseen"], "label": [1, 1, 1, 1]})
    assert kn.majority_baseline(train, test).tolist() == [0, 1, 0, 1]  # p: tie, 0 first; q: tie, 1 first


def test_forbes_trains_on_all_pairs_by_default_and_declares_a_cap():
    import inspect

    from bertology import fidelity

    assert inspect.signature(kn.probe_forbes).parameters["max_train"].default is None
    assert not any("At most" in x for x in fidelity.lines("forbes.physical", max_train_pairs=None))
    assert any("At most 6000 training pairs" in x for x in fidelity.lines("forbes.physical", max_train_pairs=6000))


def _forbes_root(tmp_path):
    pc = tmp_path / "data" / "pc"
    pc.mkdir(parents=True)
    (pc / "situated-properties.csv").write_text(
        "cocoImgID,cocoAnnID,objectUID,hard,edible\n1,10,apple,0,1\n1,11,chair,1,0\n2,12,apple,1,1\n")
    (pc / "situated-affordances-sampled.csv").write_text(
        'affordancesNo,affordancesYes,cocoAnnID,cocoImgID,objectHuman,objectUID\n'
        '"sit,drive,read","eat,peel,cut",10,1,apple,apple\n"eat,peel,fly","sit,lift,move",11,1,chair,chair\n'
        '"sit,drive,read","eat,throw,cut",12,2,apple,apple\n')
    (pc / "situated-train-object-uids.txt").write_text("apple\n")
    (pc / "situated-test-object-uids.txt").write_text("chair\n")
    return tmp_path


def test_load_forbes_builds_tasks_like_the_authors(tmp_path):
    root = _forbes_root(tmp_path)
    tr, te = kn.load_forbes("situated-OP", root)
    assert len(tr) == 2 * 2 and len(te) == 2 and set(te["a"]) == {"chair"}
    assert te.set_index("b")["label"].to_dict() == {"hard": 1, "edible": 0}
    tr, te = kn.load_forbes("situated-OA", root)
    assert len(tr) == 12 and tr["label"].sum() == 6 and set(te.query("label == 1")["b"]) == {"sit", "lift", "move"}
    tr, te = kn.load_forbes("situated-AP", root)
    assert len(tr) == 2 * 3 * 2  # 2 apple instances x 3 yes-affordances x 2 properties
    # affordance "eat" gets the properties of each instance it came with: (hard 0, edible 1) and (hard 1, edible 1)
    eat = tr[tr["a"] == "eat"].groupby("b")["label"].apply(list).to_dict()
    assert eat == {"hard": [0, 1], "edible": [1, 1]}
    assert set(te["a"]) == {"sit", "lift", "move"} and te.query("b == 'hard'")["label"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="unknown task"):
        kn.load_forbes("abstract-OA", root)


def test_counted_rows_fit_the_same_regression_as_the_expanded_data():
    """A row with count k is k identical rows: same standardisation, class balance and objective,
    hence the same predictions as fitting the repeated rows (noisy labels, so the fit matters)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=1.0, size=40) > 0).astype(int)
    counts = rng.integers(1, 6, size=40)
    test = rng.normal(size=(500, 5)).astype(np.float32)
    grouped = kn.fit_predict(x, y, test, c=0.5, counts=counts)
    expanded = kn.fit_predict(np.repeat(x, counts, axis=0), np.repeat(y, counts), test, c=0.5)
    assert (grouped == expanded).mean() >= 0.998 and 0.2 < grouped.mean() < 0.8
    assert (kn.fit_predict(x, y, test, c=0.5) != grouped).any()  # the counts do change the fit
    with pytest.raises(ValueError, match="counts"):
        kn.fit_predict(x, y, test, counts=counts[:-1])


def test_pair_regression_without_forming_the_features_is_the_same_fit():
    """fit_predict_pairs reads [u, v, u*v] off the two tables; fitted on the formed features with
    the same counts (fit_predict), the predictions agree. Tables with a large common offset (as
    BERT's outlier dimensions) test the centring; a cell holds rows of both labels, as Forbes's
    situated pairs do; an unused table row and test objects outside the training grid are there too."""
    rng = np.random.default_rng(3)
    left = rng.normal(size=(30, 6)) + rng.normal(scale=5.0, size=6)  # 25 training objects, 5 test objects
    right = rng.normal(size=(9, 6)) * 2 + 3.0  # row 8 is never used
    a = np.repeat(np.arange(25), 8)
    b = np.tile(np.arange(8), 25)
    x = kn.pair_features(left[a], right[b])
    score = x @ rng.normal(size=18) + rng.normal(scale=4.0, size=len(a))
    y = (score > np.median(score)).astype(int)
    a, b = np.concatenate([a, a[:10]]), np.concatenate([b, b[:10]])
    y = np.concatenate([y, 1 - y[:10]])  # ten cells with a row of each label
    counts = rng.integers(1, 4, size=len(a))
    ta, tb = np.repeat(np.arange(25, 30), 8), np.tile(np.arange(8), 5)
    formed = kn.fit_predict(kn.pair_features(left[a], right[b]), y, kn.pair_features(left[ta], right[tb]),
                            c=0.02, counts=counts)
    tables = kn.fit_predict_pairs(left, right, a, b, y, ta, tb, c=0.02, counts=counts)
    assert (formed == tables).all() and 0.1 < tables.mean() < 0.9
    # the decision values themselves: the same regression, not only the same side of the boundary
    scores = [f(*args, c=0.02, counts=counts, decision=True) for f, args in (
        (kn.fit_predict, (kn.pair_features(left[a], right[b]), y, kn.pair_features(left[ta], right[tb]))),
        (kn.fit_predict_pairs, (left, right, a, b, y, ta, tb)))]
    assert scores[1] == pytest.approx(scores[0], rel=1e-3, abs=1e-3 * float(np.abs(scores[0]).max()))
    assert ((scores[1] > 0) == tables).all()
    plain = kn.fit_predict_pairs(left, right, a, b, y, ta, tb, c=0.02)
    assert (plain != tables).any()  # the counts weigh the rows
    assert (kn.fit_predict_pairs(left, right, a, b, np.ones(len(a)), ta, tb) == 1).all()  # one class: that class
    with pytest.raises(ValueError, match="one entry per training pair"):
        kn.fit_predict_pairs(left, right, a[:-1], b, y, ta, tb)
    with pytest.raises(ValueError, match="differ in width"):
        kn.fit_predict_pairs(left, right[:, :5], a, b, y, ta, tb)


def test_probe_learns_a_planted_property_and_picks_its_layer():
    rng = np.random.default_rng(0)
    objs = [f"o{i}" for i in range(60)]
    props = [f"p{j}" for j in range(4)]
    emb = {}
    truth = {}
    for o in objs:
        e = rng.normal(size=(2, 8))
        truth[o] = int(e[1, 0] > 0)  # layer 1 carries the label in dimension 0; layer 0 is noise
        emb[o] = e
    for p in props:
        emb[p] = rng.normal(size=(2, 8))
    rows = [(o, p, truth[o] if p in ("p0", "p1") else 1 - truth[o], o) for o in objs for p in props]
    df = pd.DataFrame(rows, columns=["a", "b", "label", "obj"])
    train, test = df[df["obj"].isin(objs[:45])], df[df["obj"].isin(objs[45:])]
    res = kn.probe_forbes(emb, "abstract-OP", train, test, layers=[0, 1], source="planted", seed=0, c=1.0)
    val_f1 = res[(res.split == "val") & (res.category == "property")].set_index("layer")["value"]
    assert val_f1[1] > val_f1[0] + 0.2
    best = kn.best_layer_scores(res).set_index("category")
    assert set(best["layer"]) == {1} and best.loc["property", "value"] > 0.9 and best.loc["property", "n"] == len(test)


@pytest.mark.skipif(not (MIRROR / kn.FORBES).is_dir(), reason="Forbes data mirror not available")
def test_forbes_real_data_sizes_and_human_figures():
    sizes = {t: tuple(len(x) for x in kn.load_forbes(t)) for t in kn.TASKS}
    assert sizes["abstract-OP"] == (411 * 50, 103 * 50)
    tr, te = kn.load_forbes("situated-OA")
    assert tr["label"].mean() == 0.5 and set(tr["obj"]).isdisjoint(te["obj"])
    h = kn.human_scores().set_index(["task", "category"])["value"]
    assert all(0.3 < v <= 1 for v in h) and len(h) == 12
    objs, props = kn.forbes_texts()
    assert objs["baseball_bat"] == "baseball bat" and props["a_tool"] == "is a tool" and "<" not in props["unhealthy"]


def test_offline_lama_and_forbes_say_unavailable(monkeypatch):
    import bertology.data as data

    def unavailable(dataset, file):
        raise data.DataUnavailableError(f"cannot get {dataset}/{file}: offline")

    monkeypatch.setattr(data, "data_path", unavailable)
    with pytest.raises(data.DataUnavailableError):
        kn.load_lama()
    with pytest.raises(data.DataUnavailableError):
        kn.load_forbes("situated-OA")
    own = kn.load_own_facts()  # the shipped fallback needs no data
    assert set(own["corpus"]) == {"bertology facts"} and own["negated"].str.contains(" not | cannot ").all()


def test_forbes_verdict_by_hand():
    rows = []
    for system, vals in {"probe": (0.6, 0.5, 0.32), "control": (0.4, 0.3, 0.3), "majority": (0.3, 0.3, 0.1),
                         "human": (0.8, 0.8, 0.7)}.items():
        for task, v in zip(("abstract-OP", "situated-OA", "situated-AP"), vals):
            rows.append(dict(system=system, task=task, category="x", value=v))
    scores = pd.DataFrame(rows)
    g, gc = kn.forbes_gains(scores, "probe"), kn.forbes_gains(scores, "control")
    v = kn.forbes_verdict(g, control_gains=gc)
    assert v["gain_op_oa"] == pytest.approx(0.25) and v["gain_ap"] == pytest.approx(0.22)
    assert not v["pattern_as_forbes"]  # AP gain (0.22) is not below OP/OA (0.25) by the margin
    assert v["over_control_op_oa"] == pytest.approx(0.2) and v["over_control_ap"] == pytest.approx(0.02)
    assert v["pattern_vs_control"]
    assert v["shortfall_ap"] == pytest.approx(0.38)


def test_conceptnet_is_one_relation_so_its_precision_is_over_all_facts():
    lines = [_line(pred="CapableOf", uuid=1, obj_label="fly"),
             *[_line(pred="IsA", uuid=i, obj_label="bird") for i in (2, 3, 4)]]
    f = kn.parse_lama_lines(lines, "ConceptNet", "data/ConceptNet/random/ConceptNet.jsonl")
    ranks = f.assign(source="mlm", query="original", rank=[1, 5, 5, 5])  # right on the CapableOf fact only
    macro = kn.macro_by_corpus(kn.precision_at_k(ranks, ks=(1,))).set_index("corpus")
    assert macro.loc["ConceptNet", "value"] == pytest.approx(1 / 4)  # LAMA: 1 of 4 facts (by predicate: (1 + 0) / 2)
    assert macro.loc["ConceptNet", "n_relations"] == 1


def test_spearman_by_hand_with_ties():
    # ranks (1, 4, 2, 3) vs (4, 3, 2, 1): d^2 = 9 + 1 + 0 + 4 = 14, rho = 1 - 6 * 14 / (4 * 15) = -0.4
    assert kn.spearman([0.1, 0.4, 0.2, 0.3], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(-0.4)
    # ties get average ranks: (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): cov 4.5, var 4.5 and 5
    assert kn.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


class _NotScorer:
    """A scorer whose log-probabilities over the vocabulary are planted: one distribution for
    sentences with "not", another without."""

    source, label, device = "mlm", "planted", "cpu"

    def __init__(self, tokenizer, plain: dict, negated: dict):
        import torch

        self.tokenizer, self.mask_id, self.max_length = tokenizer, tokenizer.mask_token_id, 512
        self.not_id = tokenizer.convert_tokens_to_ids("not")
        self.logits = {}
        for key, scores in (("plain", plain), ("negated", negated)):
            v = torch.full((len(tokenizer),), -30.0)
            for w, x in scores.items():
                v[tokenizer.convert_tokens_to_ids(w)] = x
            self.logits[key] = v

    def log_probs(self, ids, mask, positions):
        import torch

        rows = [self.logits["negated" if (ids[b] == self.not_id).any() else "plain"] for b in positions[:, 0].tolist()]
        return torch.log_softmax(torch.stack(rows), dim=-1)


def test_score_lama_spearman_between_original_and_negated_by_hand(tokenizer):
    vocab = ["paris", "rome", "tokyo", "berlin"]
    plain = {"paris": 4.0, "rome": 3.0, "tokyo": 2.0, "berlin": 1.0}     # ranks 1 2 3 4 (best first)
    negated = {"paris": 3.0, "rome": 4.0, "tokyo": 1.0, "berlin": 2.0}   # ranks 2 1 4 3
    scorer = _NotScorer(tokenizer, plain, negated)
    facts = kn.parse_lama_lines([_line(obj_label="Paris", masked_negations=["Dante was not born in [MASK] ."]),
                                 _line(uuid=2, obj_label="Rome")], "TREx", "data/TREx/random/P19_random.jsonl")
    ranks, top = kn.score_lama(scorer, facts, vocab=vocab, k=2, batch_size=3)
    neg = ranks[ranks["query"] == "negated"]
    # d = (1, -1, 1, -1): sum d^2 = 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6; log-softmax keeps the order
    assert neg["spearman"].tolist() == pytest.approx([0.6, 0.6])
    assert ranks[ranks["query"] != "negated"]["spearman"].isna().all()
    orig = ranks[ranks["query"] == "original"].set_index("uuid")["rank"]
    assert orig.to_dict() == {"1": 1.0, "2": 2.0} and neg.set_index("uuid")["rank"].to_dict() == {"1": 2.0, "2": 1.0}
    t1 = top[top["rank"] == 1].set_index(["uuid", "query"])["token"]
    assert t1[("1", "original")] == "paris" and t1[("1", "negated")] == "rome"
    per = kn.negation_spearman(ranks)
    assert per["value"].tolist() == pytest.approx([0.6]) and per["n"].tolist() == [2]
    overlap = kn.negation_overlap(top, facts).set_index("metric")["value"]
    assert overlap["same top-1 as original"] == 0.0  # top-1 paris -> rome for both facts


def test_lama_declarations_follow_the_run():
    from bertology import fidelity

    on_release = fidelity.lines("petroni.lama", lama_data=kn.KASSNER_RELEASE, conceptnet_by_predicate=False, candidates=7)
    assert any("subset of LAMA" in x for x in on_release) and any("7 candidates" in x for x in on_release)
    own = fidelity.lines("petroni.lama", lama_data="bertology facts", conceptnet_by_predicate=False, candidates=7)
    assert not any("subset of LAMA" in x for x in own)
    assert any("ConceptNet split by predicate" in x
               for x in fidelity.lines("petroni.lama", conceptnet_by_predicate=True, candidates=7))
    assert kn.reference_table().empty  # no value that was not read from the papers or the authors' outputs


# ----------------------------------------------------------------------------- notebook 07 sections


def _run(tmp_path, loaded):
    """A notebook run (bertology.notebook.Run) around ``loaded``, without start()."""
    from bertology.notebook import Run

    return Run("07_world_knowledge", loaded, tmp_path, 0, True, "cpu", {"notes": [], "deviations": []})


def test_lama_facts_sample_and_record(tmp_path, tokenizer):
    from types import SimpleNamespace

    run = _run(tmp_path, SimpleNamespace(tokenizer=tokenizer))
    lama = kn.lama_facts(run, "shipped", 1)
    own = kn.load_own_facts()
    assert lama.vocab == kn.candidate_vocab(tokenizer) and run.values["lama_candidate_vocab_size"] == len(lama.vocab)
    assert lama.facts.equals(kn.sample_facts(own, 1, 0)) and len(lama.facts) == own["relation"].nunique()
    assert lama.counts["n_dropped"].sum() == 0 and lama.counts["n_facts"].sum() == len(own)  # shipped: all single pieces
    notes = run.meta["notes"]
    assert notes[0].startswith("The LAMA data is not available here (data='shipped' asked for)")
    assert notes[1] == (f"LAMA: 0 of {len(own)} facts dropped because the object is not a single word piece of "
                        "the model's vocabulary.")
    assert run.meta["deviations"][-1] == (f"Data: 1 facts per relation drawn with seed 0 ({len(lama.facts)} of "
                                          f"{len(own)} usable facts).")  # after the methods' declared deviations
    assert {"petroni.lama", "kassner.negated"} <= set(run.meta["methods"])
    assert run.meta["data"] == "bertology's own fact set; Forbes et al. (2019) physical commonsense"
    assert run.meta["sizes"] == {"lama_facts": len(lama.facts), "lama_relations": len(lama.facts)}


def test_lama_and_negation_studies_are_their_parts(tokenizer):
    scorers = [cloze.control_scorer(random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, seed=1), seed=s)
               for s in (2, 3)]
    facts = kn.load_own_facts().head(4)
    vocab = ["paris", "rome", "tokyo", "berlin", "french", "the", "a"]
    tops, tables = kn.lama_study(scorers, facts, vocab=vocab, k=3)
    one = [kn.score_lama(s, facts, vocab=vocab, k=3) for s in scorers]
    ranks = pd.concat([r for r, _ in one], ignore_index=True)
    assert tops.equals(pd.concat([t for _, t in one], ignore_index=True))
    assert list(tables) == ["lama_ranks", "lama_precision_per_relation", "lama_precision"]
    assert tables["lama_ranks"].equals(ranks)
    assert tables["lama_precision"].equals(kn.macro_by_corpus(kn.precision_at_k(ranks, ks=(1, 10))))
    neg = kn.negation_study(tops, ranks, facts)
    assert list(neg) == ["negation_per_relation", "negation", "negation_spearman_per_relation", "negation_spearman"]
    assert neg["negation"].equals(kn.macro_by_corpus(kn.negation_overlap(tops, facts), value="value"))
    assert neg["negation_spearman"].equals(kn.macro_by_corpus(kn.negation_spearman(ranks), value="value"))


def test_example_answers_by_hand():
    facts = pd.DataFrame({"uuid": [1, 2, 3, 4], "corpus": ["A", "A", "A", "B"], "original": list("wxyz"),
                          "obj_label": list("abcd")})
    tops = pd.DataFrame({"uuid": [1, 1, 1, 2, 4], "source": ["mlm", "mlm", "control", "mlm", "control"],
                         "query": ["original", "original", "original", "negated", "original"],
                         "rank": [1, 2, 1, 1, 1], "token": ["p", "q", "r", "s", "t"]})
    ex = kn.example_answers(tops, facts)
    assert ex.index.tolist() == [1, 2, 4] and ex.columns.tolist() == ["corpus", "original", "obj_label", "control", "mlm"]
    assert ex.fillna("-")[["control", "mlm"]].values.tolist() == [["r", "p"], ["-", "-"], ["t", "-"]]


def test_forbes_study_without_data_is_noted(tmp_path, monkeypatch):
    import bertology.data as data
    from types import SimpleNamespace

    def unavailable(dataset, file):
        raise data.DataUnavailableError(f"cannot get {dataset}/{file}: offline")

    monkeypatch.setattr(data, "data_path", unavailable)
    run = _run(tmp_path, SimpleNamespace(info=SimpleNamespace(n_layers=2)))
    assert kn.forbes_study(run) is None and "forbes.physical" not in run.meta.get("methods", {})
    (note,) = run.meta["notes"]
    assert note.startswith(f"Forbes et al.'s physical-commonsense data is not available here (cannot get {kn.FORBES}/")
    assert note.endswith(": offline); that part is skipped.")


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / kn.FORBES).is_dir(), reason="Forbes data mirror not available")
def test_forbes_study_is_its_parts(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("BERTOLOGY_CACHE", str(tmp_path / "cache"))
    loaded = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, mlm=False, seed=0)
    run = _run(tmp_path, loaded)
    run.set_data("x")
    fs = kn.forbes_study(run, 40, 20, 2, batch_size=32)
    task_data, caps = kn.forbes_data(40, 20, 0)
    assert fs.layers == [0, 2] == run.values["forbes_probe_layers"] and caps == {"max_train_pairs": 40, "max_test_pairs": 20}
    assert run.meta["methods"]["forbes.physical"] == caps
    probe = kn.forbes_probes(loaded, task_data, [0, 2], seed=0, batch_size=32)
    pd.testing.assert_frame_equal(fs.probe, probe)
    pd.testing.assert_frame_equal(fs.scores, kn.forbes_table(kn.best_layer_scores(probe), kn.majority_scores(task_data),
                                                             kn.human_scores(), "random-bert-2x2"))
    assert run.meta["data"] == "x" and run.meta["sizes"]["forbes_pairs_test"] == 4 * 20
