"""Numeracy (notebook 06): tokenization tables, Wallace et al. probes, NumerSense ranking."""
import numpy as np
import pandas as pd
import pytest
import torch

from bertology import numeracy as nm


# ----------------------------------------------------------------------------- tokenization


def test_number_pieces_split_decimals_after_the_point(tokenizer):
    df = nm.number_pieces(tokenizer, ["1.06", "1.08", "7"])
    assert df["pieces"].tolist() == ["1 . 06", "1 . 08", "7"]
    assert df["n_pieces"].tolist() == [3, 3, 1]
    assert df["single"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="non-empty"):
        nm.number_pieces(tokenizer, ["1", " "])


def test_integer_pieces_and_summary(tokenizer):
    ints = nm.integer_pieces(tokenizer, 0, 12)
    assert ints["value"].tolist() == list(range(13))
    assert ints["digits"].tolist() == [1] * 10 + [2] * 3
    s = nm.pieces_summary(ints)
    # every integer 0..12 is one WordPiece of the uncased BERT vocabulary
    assert s["n"].tolist() == [10, 3] and s["share_single"].tolist() == [1.0, 1.0]
    assert s["mean_pieces"].tolist() == [1.0, 1.0]
    with pytest.raises(KeyError, match="nope"):
        nm.pieces_summary(ints, by="nope")


def test_decimal_pieces_counts_pieces_after_the_point(tokenizer):
    d = nm.decimal_pieces(tokenizer, 1.05, 1.08, decimals=2)
    assert d["number"].tolist() == ["1.05", "1.06", "1.07"]
    assert np.allclose(d["value"], [1.05, 1.06, 1.07])
    assert d["fraction_pieces"].tolist() == [1, 1, 1]


def test_similar_pairs_share_only_the_integer_part(tokenizer):
    p = nm.similar_pairs(tokenizer, [("1.06", "1.08")]).iloc[0]
    assert p["pieces_a"] == "1 . 06" and p["pieces_b"] == "1 . 08"
    assert p["shared"] == 2 and p["jaccard"] == pytest.approx(2 / 4)
    assert p["value_gap"] == pytest.approx(0.02)


def test_pair_cosines_and_neighbour_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    assert np.allclose(nm.pair_cosines(a, b), [0.0, 1.0])
    # embeddings on a circle: neighbours 1 apart have cosine cos(0.1)
    ang = np.arange(20) * 0.1
    emb = np.stack([np.cos(ang), np.sin(ang)], 1)
    t = nm.neighbour_similarity(emb, np.arange(20), offsets=(1, 5), n_random=50)
    assert t.loc[t.offset == 1, "mean_cosine"].item() == pytest.approx(np.cos(0.1))
    assert t.loc[t.offset == 5, "mean_cosine"].item() == pytest.approx(np.cos(0.5))
    with pytest.raises(ValueError, match="consecutive"):
        nm.neighbour_similarity(emb, np.arange(20) * 2)


# ----------------------------------------------------------------------------- embeddings


def test_embed_numbers_takes_the_last_piece_of_the_chosen_layer(tokenizer, tmp_path):
    from bertology.models import random_bert

    loaded = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, mlm=False, seed=3)
    nums = ["7", "1.06", "12345"]
    emb = nm.embed_numbers(loaded, nums, layer=1, pool="last", progress=False, cache_dir=tmp_path)
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    with torch.inference_mode():
        for i, s in enumerate(nums):
            enc = tokenizer(s, return_tensors="pt")
            hs = loaded.model(**enc, output_hidden_states=True).hidden_states
            n = enc["input_ids"].shape[1]
            assert np.allclose(emb[i], hs[1][0, n - 2].numpy(), atol=1e-5)  # last piece before [SEP]
    assert len(list(tmp_path.glob("states-*/index.json"))) == 1  # the engine's states cache
    again = nm.embed_numbers(loaded, nums, layer=1, pool="last", progress=False, cache_dir=tmp_path)
    assert np.array_equal(emb, again)
    last = nm.embed_numbers(loaded, nums, layer=None, progress=False)
    assert not np.allclose(last, emb)
    with pytest.raises(ValueError, match="layer"):
        nm.embed_numbers(loaded, nums, layer=3, progress=False)
    with pytest.raises(ValueError, match="whitespace"):
        nm.embed_numbers(loaded, ["1 2"], progress=False)
    with pytest.raises(ValueError, match="pool"):
        nm.embed_numbers(loaded, nums, pool="max", progress=False)


def test_lists_are_embedded_in_one_sequence_at_each_numbers_last_piece(tokenizer, tmp_path, monkeypatch):
    """The authors' encoding: [CLS] n1 n2 [SEP] is one input; each number is its last piece's state."""
    from bertology.models import random_bert

    loaded = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, mlm=False, seed=3)
    lists = np.array([[7, 12345], [12345, 7]])
    emb = nm.embed_lists(loaded, lists, layer=2, pool="last", cache_dir=tmp_path)
    assert emb.shape == (2, 2, 16)
    with torch.inference_mode():
        for i, row in enumerate(lists.tolist()):
            pieces = [tokenizer.tokenize(str(v)) for v in row]
            ids = tokenizer.convert_tokens_to_ids(["[CLS]"] + pieces[0] + pieces[1] + ["[SEP]"])
            hs = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
            last = [len(pieces[0]), len(pieces[0]) + len(pieces[1])]  # positions of each number's last piece
            assert np.allclose(emb[i], hs[last].numpy(), atol=1e-5)
    # in context, 7 is not what it is alone: the one-number-per-input encoding differs
    alone = nm.embed_numbers(loaded, ["7"], layer=2, progress=False)[0]
    assert not np.allclose(emb[0, 0], alone, atol=1e-4)
    # the embedder: one-number inputs are the isolated encoding; repeated lists give the same rows
    ctx = nm.ContextEmbedder(loaded, layer=2)
    assert np.allclose(ctx(np.array([[7]]))[0, 0], alone, atol=1e-6)
    rep = ctx(np.array([[7, 12345], [12345, 7], [7, 12345]]))
    assert np.allclose(rep[0], emb[0], atol=1e-6) and np.allclose(rep[2], emb[0], atol=1e-6)
    assert np.allclose(rep[1], emb[1], atol=1e-6)
    assert len(list(tmp_path.glob("states-*/index.json"))) == 1  # one states() cache entry: the lists
    # a number is run through the model once per embedder, whichever calls ask for it
    asked = []
    real = nm.embed_numbers
    monkeypatch.setattr(nm, "embed_numbers", lambda loaded, nums, *a, **k: asked.append(list(nums)) or real(
        loaded, nums, *a, **k))
    ctx2 = nm.ContextEmbedder(loaded, layer=2)
    first = ctx2(np.array([[7], [3], [7]]))
    second = ctx2(np.array([[3], [12345], [7]]))
    assert asked == [["3", "7"], ["12345"]]
    assert np.allclose(first[0, 0], alone, atol=1e-6) and np.allclose(second[2, 0], alone, atol=1e-6)
    assert np.array_equal(first[1], second[0]) and second.shape == (3, 1, 16)
    assert np.allclose(second[1, 0], nm.embed_numbers(loaded, ["12345"], layer=2, progress=False)[0], atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        nm.embed_lists(loaded, lists, pool="max")


# ----------------------------------------------------------------------------- probe data


def test_interpolation_split_is_a_disjoint_80_20_partition():
    tr, te = nm.interpolation_split(0, 99, seed=1)
    assert len(tr) == 80 and len(te) == 20
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(100))
    tr2, _ = nm.interpolation_split(0, 99, seed=1)
    assert np.array_equal(tr, tr2)
    with pytest.raises(ValueError, match="too small"):
        nm.interpolation_split(0, 5)


def test_max_lists_and_pairs():
    nums = np.arange(100, 200)
    lists, arg = nm.make_max_lists(nums, 300, length=5, seed=0)
    assert lists.shape == (300, 5)
    assert all(len(set(r)) == 5 for r in lists.tolist())
    assert np.array_equal(lists[np.arange(300), arg], lists.max(1))
    assert set(lists.ravel()) <= set(nums)
    assert len(set(arg.tolist())) == 5  # the maximum is not always in the same slot
    pairs = nm.make_pairs(np.array([3, 4]), 50, seed=0)
    assert (pairs[:, 0] != pairs[:, 1]).all() and set(pairs.ravel()) == {3, 4}
    with pytest.raises(ValueError, match="distinct"):
        nm.make_max_lists(np.arange(6), 10)


def test_distractor_rule_by_hand():
    """Authors' max.generate_max_data: sd 5 up to index 500, then 1% of the maximum's index;
    index = max_index - int(draw), clamped to [0, max_index - 1]."""
    assert nm.distractor_scale(100) == 5.0 and nm.distractor_scale(500) == 5.0
    assert nm.distractor_scale(2000) == pytest.approx(20.0)  # not 1% of the pool (80 for 8,000 numbers)
    assert nm.distractor_index(100, 2.7) == 98  # int(2.7) = 2
    assert nm.distractor_index(100, -3.2) == 99  # above the maximum -> just below it
    assert nm.distractor_index(100, 0.4) == 99  # int(0.4) = 0 -> the maximum itself -> just below it
    assert nm.distractor_index(3, 7.5) == 0  # below the pool -> 0


def test_list_maximum_is_drawn_from_index_10_to_n_minus_2():
    """With 20 sorted numbers the maximum's index is in [10, 19): never the 10 smallest, never the
    largest (our old construction drew it from [5, 20))."""
    nums = np.arange(100, 120)
    lists, arg = nm.make_max_lists(nums, 400, length=5, seed=1)
    top = lists.max(1)
    assert top.min() >= nums[10] and top.max() <= nums[18]
    assert set(top.tolist()) == set(nums[10:19].tolist())  # every allowed index occurs in 400 lists
    # every list's other numbers lie below its maximum
    assert all((np.delete(r, a) < r[a]).all() for r, a in zip(lists, arg))
    with pytest.raises(ValueError, match="distinct"):
        nm.make_max_lists(np.arange(11), 5)


def test_best_epoch_and_final_by_hand():
    acc = [(10, 0.5), (20, 0.7), (30, 0.6)]
    assert nm.best_and_final(acc, higher_is_better=True) == {"best": 0.7, "final": 0.6, "best_step": 20, "n_evals": 3}
    rmse = [(5, 9.0), (10, 4.0), (15, 4.0), (20, 6.0)]
    assert nm.best_and_final(rmse, higher_is_better=False) == {"best": 4.0, "final": 6.0, "best_step": 10,
                                                               "n_evals": 4}
    with pytest.raises(ValueError, match="empty"):
        nm.best_and_final([], True)


def test_held_out_numbers_are_evaluated_after_every_epoch():
    """80 training numbers in batches of 32 make 3-step epochs: 10 steps evaluate after steps 3, 6, 9
    and the last (4 times); the reported RMSE is the best of them, never worse than the last."""
    cfg = nm.ProbeConfig(steps=10, batch_size=32)
    res = nm.probe_decoding(nm.value_embedding(np.arange(100)), 0, 99, seed=0, cfg=cfg)
    assert res["n_evals"] == 4 and res["best_step"] in (3, 6, 9, 10)
    assert res["rmse"] <= res["rmse_final"]
    assert np.sqrt(np.mean((res["pred"] - res["test"]) ** 2)) == pytest.approx(res["rmse"], rel=1e-5)
    mx = nm.probe_list_max(nm.value_embedding(np.arange(100)), 0, 99, seed=0,
                           cfg=nm.ProbeConfig(max_steps=7, batch_size=100, n_train_lists=300, n_test_lists=50))
    assert mx["n_evals"] == 3 and mx["accuracy"] >= mx["accuracy_final"]  # epochs of 3 steps: after 3, 6, 7


# ----------------------------------------------------------------------------- probes


def test_decoding_probe_reads_a_value_encoded_number_fast():
    cfg = nm.ProbeConfig(steps=150)
    assert nm.probe_decoding(nm.value_embedding(np.arange(100)), 0, 99, seed=0, cfg=cfg)["rmse"] < 3


@pytest.mark.parametrize("probe", [nm.probe_decoding, nm.probe_addition, nm.probe_list_max])
def test_inputs_are_embedded_with_every_thread_and_only_mlp_training_runs_on_one(probe, monkeypatch):
    """The model's forward passes that embed a probe's inputs keep all threads; only the tiny
    MLPs' training is pinned to one (and the thread count is restored afterwards); the BiLSTM of
    list maximum trains with every thread."""
    value = nm.value_embedding(np.arange(100))
    seen, trained = [], []
    real_train = nm._train

    def recording_train(*args, **kwargs):
        trained.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(nm, "_train", recording_train)

    class Recording(nm.TableEmbedder):
        def __call__(self, lists):
            seen.append(torch.get_num_threads())
            return super().__call__(lists)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        probe(Recording(value, 0), 0, 99, seed=0, cfg=nm.ProbeConfig(steps=2, max_steps=2, n_train_lists=50,
                                                                       n_test_lists=20))
        assert seen and set(seen) == {2} and torch.get_num_threads() == 2
        assert trained == [2 if probe is nm.probe_list_max else 1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_probes_learn_a_trivially_encoded_number_and_not_noise():
    """Acceptance: the Wallace probes solve the value-encoded embedding; random vectors fail."""
    cfg = nm.ProbeConfig(steps=300, max_steps=300, n_train_lists=3000, n_test_lists=500)
    value = nm.value_embedding(np.arange(100))
    noise = np.random.default_rng(0).standard_normal((100, 32)).astype(np.float32)
    dec = nm.probe_decoding(value, 0, 99, seed=0, cfg=cfg)
    assert dec["rmse"] < 1.5 and dec["n_train"] == 80 and dec["n_test"] == 20
    assert np.allclose(np.sort(dec["test"]), np.sort(nm.interpolation_split(0, 99, 0)[1]))
    assert nm.probe_decoding(noise, 0, 99, seed=0, cfg=cfg)["rmse"] > 15  # chance: sd of U(0,99) ~ 29
    add = nm.probe_addition(value, 0, 99, seed=0, cfg=cfg)
    assert add["rmse"] < 3
    mx = nm.probe_list_max(value, 0, 99, seed=0, cfg=cfg)
    assert mx["accuracy"] > 0.85  # chance 0.2
    again = nm.probe_decoding(value, 0, 99, seed=0, cfg=cfg)
    assert again["rmse"] == dec["rmse"]  # same seed, same number


def test_probe_inputs_are_checked():
    with pytest.raises(ValueError, match="one row per integer"):
        nm.probe_decoding(np.zeros((50, 3)), 0, 99)
    bad = np.zeros((100, 2), dtype=np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nm.probe_decoding(bad, 0, 99)
    with pytest.raises(ValueError, match="steps"):
        nm.ProbeConfig(steps=0)
    with pytest.raises(ValueError, match="unknown task"):
        nm.run_probes({"v": (nm.value_embedding(np.arange(100)), "value")}, ranges=(99,), tasks=("sorting",))


def test_run_probes_and_summary_shape():
    cfg = nm.ProbeConfig(steps=20, max_steps=5, n_train_lists=100, n_test_lists=50)
    embs = {"value": (nm.value_embedding(np.arange(1000)), "value-encoded sanity embedding")}
    df = nm.run_probes(embs, ranges=(99, 999), seeds=(0, 1), cfg=cfg, progress=False)
    assert len(df) == 3 * 2 * 2
    assert set(df["metric"]) == {"accuracy", "rmse"}
    assert (df.loc[df.task == "list_max", "metric"] == "accuracy").all()
    assert set(df.loc[df.range_max == 999, "n_test"]) == {200, 50}
    acc = df[df.metric == "accuracy"]
    assert (acc["value"] >= acc["final"]).all() and (df.loc[df.metric == "rmse", "value"]
                                                     <= df.loc[df.metric == "rmse", "final"]).all()
    assert {"best_step", "n_evals"} <= set(df.columns)


def test_summarize_probes_mean_and_std_by_hand():
    df = pd.DataFrame({"task": "decoding", "metric": "rmse", "range_max": 99, "embedding": "m", "label": "L",
                       "seed": [0, 1, 2], "value": [1.0, 2.0, 6.0], "final": [2.0, 2.0, 8.0]})
    s = nm.summarize_probes(df).iloc[0]
    assert s["mean"] == pytest.approx(3.0) and s["std"] == pytest.approx(np.sqrt(7.0)) and s["n_seeds"] == 3
    assert s["mean_final"] == pytest.approx(4.0)
    one = nm.summarize_probes(df.iloc[:1]).iloc[0]
    assert one["std"] == 0.0


# ----------------------------------------------------------------------------- NumerSense


def test_load_numersense_file_and_errors(tmp_path):
    f = tmp_path / "v.tsv"
    f.write_text("a bird has <mask> legs.\ttwo\nsnakes have <mask> legs.\tno\n")
    items, source = nm.load_numersense(f)
    assert items["context"].tolist() == ["a bird has [MASK] legs.", "snakes have [MASK] legs."]
    assert items["answer"].tolist() == ["two", "no"] and items["item"].tolist() == [0, 1]
    assert source == str(f)
    f.write_text("a bird has two legs.\ttwo\n")
    with pytest.raises(ValueError, match="exactly one <mask>"):
        nm.load_numersense(f)
    f.write_text("a bird has <mask> legs.\ttwenty\n")
    with pytest.raises(ValueError, match="twenty"):
        nm.load_numersense(f)


def test_shipped_numeric_cloze_items_are_valid():
    items, _ = nm.load_numersense(nm.STIMULI / "numeracy_cloze.tsv")
    assert len(items) >= 20 and set(items["answer"]) <= set(nm.NUMERSENSE_CANDIDATES)


def test_numersense_mirror_has_200_validation_probes():
    from bertology.data import DataUnavailableError

    try:
        items, source = nm.load_numersense()
    except DataUnavailableError:
        pytest.skip("NumerSense not available here")
    if "NumerSense" in source:
        assert len(items) == 200 and items["answer"].value_counts()["two"] == 50


def test_candidate_ranks_and_hit_at_k_by_hand():
    items = pd.DataFrame({"item": [0, 1, 2], "context": ["x"] * 3, "answer": ["two", "four", "no"]})
    lp = {0: {"two": -1.0, "four": -2.0, "no": -3.0},   # gold best -> rank 1
          1: {"two": -1.0, "four": -2.0, "no": -3.0},   # gold second -> rank 2
          2: {"two": -1.0, "four": -1.0, "no": np.nan}}  # gold unscored -> last (3)
    targets = pd.DataFrame([{"item": i, "target": t, "logprob": v} for i, d in lp.items() for t, v in d.items()])
    r = nm.candidate_ranks(targets, items)
    assert r["gold_rank"].tolist() == [1, 2, 3]
    assert r["top"].tolist() == ["two", "two", "two"]
    m = nm.numersense_metrics(r).set_index("metric")
    assert m.loc["hit@1", "value"] == pytest.approx(1 / 3) and m.loc["hit@2", "value"] == pytest.approx(2 / 3)
    assert m.loc["hit@1", "chance"] == pytest.approx(1 / 3) and m.loc["mean_rank", "value"] == pytest.approx(2.0)
    # ties count against the gold answer
    tie = pd.DataFrame({"item": [0, 0], "target": ["two", "four"], "logprob": [-1.0, -1.0]})
    assert nm.candidate_ranks(tie, items.iloc[:1])["gold_rank"].item() == 2
    with pytest.raises(ValueError, match="gold answer"):
        nm.candidate_ranks(tie, items.iloc[1:2])


def test_majority_baseline():
    items = pd.DataFrame({"answer": ["two", "two", "four"]})
    b = nm.majority_baseline(items)
    assert b["answer"] == "two" and b["hit@1"] == pytest.approx(2 / 3) and b["in_sample"]
    assert nm.majority_baseline(items, ["four"])["hit@1"] == pytest.approx(1 / 3)


def test_score_numersense_with_the_cloze_engine(tokenizer):
    from bertology import cloze
    from bertology.models import random_bert

    loaded = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=True, seed=0)
    items = pd.DataFrame({"item": [0, 1], "context": ["a bird has [MASK] legs.", "a week has [MASK] days."],
                          "answer": ["two", "seven"]})
    ranked = nm.score_numersense(cloze.mlm_scorer(loaded), items)
    assert ranked["source"].tolist() == ["mlm", "mlm"]
    assert ranked["n_candidates"].tolist() == [12, 12]
    assert ranked["gold_rank"].between(1, 12).all()


# ----------------------------------------------------------------------------- deviations and findings


def test_declared_deviations_follow_the_run_options():
    from bertology import fidelity

    authors = dict(encode="context", layer="last", pool="last", lstm_rank=None, n_seeds=1)
    keys = {d.key for d in fidelity.deviations("wallace.probes", **authors)}
    assert keys == {"training"}  # only the shortened training remains at the authors' settings
    ours = dict(authors, encode="isolated", layer=3, lstm_rank=64, n_seeds=3)
    lines = fidelity.lines("wallace.probes", **ours)
    assert any("encode='isolated'" in t for t in lines) and any("hidden layer 3" in t for t in lines)
    assert any("64 dimensions" in t for t in lines) and any("3 seeds" in t for t in lines)
    assert all(d.reference for d in fidelity.deviations("wallace.probes", **ours))


def _summary(task, metric, r, emb, mean, final=None):
    return {"task": task, "metric": metric, "range_max": r, "embedding": emb, "label": emb, "mean": mean,
            "std": 0.0, "n_seeds": 2, "mean_final": mean if final is None else final}


def test_findings_from_hand_made_tables():
    probes = pd.DataFrame([
        _summary("list_max", "accuracy", 99, "model", 0.8, 0.7), _summary("list_max", "accuracy", 99, "control", 0.3),
        _summary("list_max", "accuracy", 99, "value", 1.0),
        _summary("decoding", "rmse", 99, "model", 5.0), _summary("decoding", "rmse", 99, "control", 20.0),
        _summary("decoding", "rmse", 99, "value", 0.5),
        _summary("addition", "rmse", 99, "model", 9.0), _summary("addition", "rmse", 99, "control", 30.0),
        _summary("decoding", "rmse", 999, "model", 300.0), _summary("decoding", "rmse", 999, "control", 250.0),
    ])
    assert nm.decoding_beats_control(probes, [99]) is True
    assert nm.decoding_beats_control(probes, [99, 999]) is False  # 300 > 250 in [0, 999]
    assert nm.decoding_beats_control(probes, [9999]) is False  # missing cell
    ints = pd.DataFrame({"single": [True, True, False, False]})
    by_digits = pd.DataFrame({"digits": [1, 4], "share_single": [1.0, 0.0]})
    decs = pd.DataFrame({"n_pieces": [3, 3, 2]})
    pairs = pd.DataFrame([{"a": "1.06", "b": "1.08", "pieces_a": "1 . 06", "pieces_b": "1 . 08", "shared": 2,
                           "cosine": 0.9}])
    near = pd.DataFrame({"embedding": ["model", "model"], "pair": ["1 apart", "random"], "mean_cosine": [0.8, 0.5]})
    ns = pd.DataFrame({"label": "readout", "metric": ["hit@1"], "value": [0.25], "chance": [1 / 12]})
    lines = nm.findings(ints, by_digits, decs, pairs, probes, near, ns, {"answer": "two", "hit@1": 0.4},
                        ranges=[99, 999], probe_layer=6, n_seeds=2, tokenize_max=3, model_name="m",
                        has_mlm_head=False, n_items=12)
    text = "\n".join(lines)
    assert "50.0% of the integers 0–3" in text and "decimals 0.00–9.99 take 2.67 pieces" in text
    assert "list maximum 0.80 ± 0.00 (last step 0.70) on the model vs 0.30" in text
    assert "decoding RMSE 5.0 vs 20.0" in text and "[0, 999]" not in text  # incomplete range is skipped
    assert "did not consistently" in text and "cosine 0.80 vs 0.50" in text
    assert "hit@1 25.0%, above a uniform guess (8.3%)" in text and "'two' would get 40.0%" in text
    assert lines[-1].startswith("- m has no MLM head")
    one = "\n".join(nm.findings(ints, by_digits, decs, pairs, probes, near, ns, {"answer": "two", "hit@1": 0.4},
                                ranges=[99, 999], probe_layer=6, n_seeds=1, tokenize_max=3, model_name="m",
                                has_mlm_head=False, n_items=12))
    # one run (the default, as the paper's Table 4): no spread is printed, since there is none to show
    assert "one run, as the paper's Table 4" in one and "list maximum 0.80 (last step 0.70) on the model" in one
    assert "±" not in one


# ----------------------------------------------------------------------------- notebook 06 sections


def _run(tmp_path, loaded):
    """A notebook run (bertology.notebook.Run) around ``loaded``, without start()."""
    from bertology.notebook import Run

    return Run("06_numeracy", loaded, tmp_path, 0, True, "cpu", {"notes": [], "deviations": []})


def test_probe_setup_resolves_and_records(tmp_path):
    from types import SimpleNamespace

    from bertology.notebook import ParameterError

    run = _run(tmp_path, SimpleNamespace(info=SimpleNamespace(n_layers=2)))
    layer, cfg, ranges = nm.probe_setup(run, -1, max_range=999, n_seeds=2, probe_steps=7, max_steps=5)
    assert (layer, ranges, cfg.steps, cfg.max_steps) == (2, [99, 999], 7, 5)
    assert run.values == {"probe_layer": 2, "ranges": [99, 999], "encode": "context"}
    assert run.meta["methods"]["wallace.probes"]["layer"] == "last"
    assert nm.probe_setup(run, 1, max_range=50)[::2] == (1, [50])
    assert run.meta["methods"]["wallace.probes"]["layer"] == 1
    with pytest.raises(ParameterError, match="'layer'/'lstm_rank'"):
        nm.probe_setup(run, 3)
    with pytest.raises(ParameterError, match="lstm_rank"):
        nm.probe_setup(run, -1, lstm_rank=0)


def test_tokenization_study_is_its_parts(tmp_path, tokenizer):
    from types import SimpleNamespace

    run = _run(tmp_path, SimpleNamespace(tokenizer=tokenizer))
    tk = nm.tokenization_study(run, 120)
    ints = nm.integer_pieces(tokenizer, 0, 120)
    assert tk.integers.equals(ints) and tk.by_digits.equals(nm.pieces_summary(ints, by="digits"))
    assert tk.decimals.equals(nm.decimal_pieces(tokenizer, 0.0, 10.0, decimals=2))
    assert tk.decimal_summary.columns.tolist() == ["n_pieces", "n"]
    assert tk.decimal_summary["n"].sum() == len(tk.decimals) and tk.decimal_summary["n_pieces"].is_monotonic_increasing
    assert run.values["share_single_piece_integers"] == float(ints["single"].mean())
    assert run.values["key_numbers"] == {"share of integers 0-10,000 that are one piece": round(float(ints["single"].mean()), 4)}


@pytest.mark.slow  # a tiny model over 0..99, two short probe trainings a task
def test_probe_study_is_its_parts(tmp_path, tokenizer, monkeypatch):
    from bertology.models import random_bert, random_init_control

    monkeypatch.setenv("BERTOLOGY_CACHE", str(tmp_path / "cache"))
    loaded = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=False, seed=0)
    run = _run(tmp_path, loaded)
    cfg = nm.ProbeConfig(steps=3, max_steps=2, n_train_lists=20, n_test_lists=10)
    ps = nm.probe_study(run, [99], 1, encode="isolated", batch_size=64, n_seeds=1, cfg=cfg, progress=False)
    assert list(ps.embeddings) == ["model", "control", "value"] and set(ps.labels) == set(ps.embeddings)
    embs = nm.probe_embeddings(loaded, random_init_control(loaded, 0), 99, 1, "last", "isolated", 64, control_seed=0)
    by_hand = nm.run_probes(embs, ranges=[99], seeds=[0], cfg=cfg, progress=False)
    pd.testing.assert_frame_equal(ps.runs, by_hand)
    pd.testing.assert_frame_equal(ps.summary, nm.summarize_probes(by_hand))
    assert run.values == {}  # records nothing


def test_numersense_study_scores_the_model_and_the_control(tmp_path, tokenizer):
    from bertology.models import random_bert

    run = _run(tmp_path, random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=True, seed=0))
    items = pd.DataFrame({"item": [0, 1, 2], "context": ["a bird has [MASK] legs.", "a week has [MASK] days.",
                                                         "a dog has [MASK] legs."], "answer": ["two", "seven", "four"]})
    ns = nm.numersense_study(run, items=(items, "hand-made"))
    assert ns.source == "hand-made" and ns.items is items and run.meta["notes"] == []
    assert ns.majority == nm.majority_baseline(items) == run.values["numersense_majority_in_sample"]
    assert ns.ranked["source"].tolist() == ["mlm"] * 3 + ["control"] * 3
    assert set(ns.metrics["source"]) == {"mlm", "control"} and run.values["numersense_source"] == "hand-made"
    nm.numersense_study(run, items=(items, nm.NUMERSENSE_FALLBACK))
    assert run.meta["notes"] == ["NumerSense is not available here; scored 3 numeric cloze items written for "
                                 "bertology instead."]
    assert nm.data_text(10, "x") == "integers 0-10 and decimals 0.00-9.99 (generated); x"
