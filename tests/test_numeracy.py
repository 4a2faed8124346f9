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
    assert len(list(tmp_path.glob("numbers-*.safetensors"))) == 1
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


# ----------------------------------------------------------------------------- probes


def test_decoding_probe_reads_a_value_encoded_number_fast():
    cfg = nm.ProbeConfig(steps=150)
    assert nm.probe_decoding(nm.value_embedding(np.arange(100)), 0, 99, seed=0, cfg=cfg)["rmse"] < 3


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


def test_summarize_probes_mean_and_std_by_hand():
    df = pd.DataFrame({"task": "decoding", "metric": "rmse", "range_max": 99, "embedding": "m", "label": "L",
                       "seed": [0, 1, 2], "value": [1.0, 2.0, 6.0]})
    s = nm.summarize_probes(df).iloc[0]
    assert s["mean"] == pytest.approx(3.0) and s["std"] == pytest.approx(np.sqrt(7.0)) and s["n_seeds"] == 3
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
