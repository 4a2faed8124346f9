"""The cloze engine on models whose output scores are set by hand, so every number is derivable."""
import math

import numpy as np
import pytest
import torch

from bertology import cloze as C
from conftest import bias_only_mlm
from bertology.models import MissingHeadError, random_bert


def _id(tok, word):
    ids = tok(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, word
    return ids[0]


@pytest.fixture(scope="module")
def bias_only(tokenizer):
    """A tiny BertForMaskedLM whose logits are the decoder bias at every position, whatever the input:
    the head's transform is zeroed (dense -> 0, GELU(0) = 0, LayerNorm bias 0), so logits = bias.
    bias: 'paris' 3, 'london' 1, everything else 0."""
    return bias_only_mlm(tokenizer, {"paris": 3.0, "london": 1.0})


@pytest.fixture(scope="module")
def logz(tokenizer):
    return math.log(math.exp(3) + math.exp(1) + len(tokenizer) - 2)


def test_single_piece_logprob_rank_and_top(bias_only, tokenizer, logz):
    sc = C.mlm_scorer(bias_only)
    assert sc.source == "mlm" and "MLM head" in sc.label
    r = C.cloze(sc, ["The capital of France is [MASK].", "[MASK] is big"], [["paris", "london", "berlin"], "London"], k=2)
    t = r.targets.set_index(["item", "target"])
    assert t.loc[(0, "paris"), "logprob"] == pytest.approx(3 - logz, abs=1e-4)
    assert t.loc[(0, "london"), "logprob"] == pytest.approx(1 - logz, abs=1e-4)
    assert t.loc[(0, "berlin"), "prob"] == pytest.approx(math.exp(-logz), rel=1e-4)
    # ranks among all non-special tokens: paris 1, london 2, berlin ties with ~30k zeros -> 3
    assert t["rank"].tolist() == [1.0, 2.0, 3.0, 2.0]
    assert t.loc[(1, "London"), "n_pieces"] == 1  # uncased tokenizer: same piece as 'london'
    assert r.top.query("item == 0")["token"].tolist() == ["paris", "london"]
    assert r.top["rank"].tolist() == [1, 2, 1, 2]


def test_vocab_restricts_top_and_rank(bias_only, tokenizer, logz):
    sc = C.mlm_scorer(bias_only)
    r = C.cloze(sc, ["I live in [MASK]."], [["berlin", "paris"]], k=3, vocab=["london", "berlin", "unbelievably"])
    assert r.vocab_dropped == ["unbelievably"]
    assert r.top["token"].tolist()[:1] == ["london"] and len(r.top) == 2
    t = r.targets.set_index("target")
    assert t.loc["berlin", "rank"] == 2.0  # only london is higher among the vocab
    assert t.loc["paris", "rank"] == 1.0  # higher than every vocab word


def test_multi_piece_sequential_and_skip(bias_only, tokenizer, logz):
    sc = C.mlm_scorer(bias_only)
    n = len(tokenizer("unbelievably", add_special_tokens=False)["input_ids"])
    assert n == 5
    r = C.cloze(sc, ["That is [MASK] good."], [["unbelievably", "paris"]], k=0)
    t = r.targets.set_index("target")
    assert t.loc["unbelievably", "n_pieces"] == 5
    assert t.loc["unbelievably", "logprob"] == pytest.approx(-5 * logz, abs=1e-3)
    assert np.isnan(t.loc["unbelievably", "rank"]) and r.top.empty
    s = C.cloze(sc, ["That is [MASK] good."], [["unbelievably", "paris"]], k=0, multi_piece="skip")
    assert s.n_skipped == 1
    assert np.isnan(s.targets.set_index("target").loc["unbelievably", "logprob"])
    assert s.targets.set_index("target").loc["paris", "logprob"] == pytest.approx(3 - logz, abs=1e-4)


class LeftEcho(C.Scorer):
    """Fake scorer: the logit of the token just left of the masked position is 2, all others 0.
    Records the sequences it is asked about."""

    def __init__(self, loaded):
        super().__init__(loaded, "mlm", "left-echo")
        self.seen = []

    def _states(self, input_ids, attention_mask, positions):
        out = torch.zeros(len(positions), len(self.tokenizer))
        for n, (r, c) in enumerate(positions.tolist()):
            out[n, input_ids[r, c - 1]] = 2.0
            self.seen.append(input_ids[r, : int(attention_mask[r].sum())].tolist())
        return out


def test_sequential_fills_earlier_pieces(bias_only, tokenizer):
    sc = LeftEcho(bias_only)
    lz = math.log(math.exp(2) + len(tokenizer) - 1)
    r = C.cloze(sc, ["you say [MASK] again"], [["no no", "say"]], k=1, batch_size=1)
    t = r.targets.set_index("target")
    # piece 1 'no' follows 'say' (no bonus); piece 2 'no' follows the filled-in 'no' (+2)
    assert t.loc["no no", "n_pieces"] == 2
    assert t.loc["no no", "logprob"] == pytest.approx((0 - lz) + (2 - lz), abs=1e-4)
    assert t.loc["say", "logprob"] == pytest.approx(2 - lz, abs=1e-4) and t.loc["say", "rank"] == 1
    assert r.top["token"].tolist() == ["say"]
    mask, no = tokenizer.mask_token_id, _id(tokenizer, "no")
    assert sum(s.count(mask) == 2 for s in sc.seen) == 1  # step 1: both pieces masked
    assert any(s.count(mask) == 1 and no in s for s in sc.seen)  # step 2: first piece filled


def test_pll_is_sum_over_masked_pieces(bias_only, tokenizer, logz):
    sc = C.mlm_scorer(bias_only)
    df = C.pll(sc, ["paris london .", "london", "unbelievably paris"], batch_size=4)
    assert df["n_pieces"].tolist() == [3, 1, 6]
    assert df["pll"].tolist() == pytest.approx([(3 - logz) + (1 - logz) - logz, 1 - logz, 3 - 6 * logz], abs=1e-3)


def test_pll_batching_does_not_change_scores(tokenizer):
    m = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=True, seed=1)
    sc = C.mlm_scorer(m)
    sents = ["the cat sat on the mat .", "dogs bark", "a much longer sentence about nothing in particular"]
    one = C.pll(sc, sents, batch_size=1)["pll"].to_numpy()
    many = C.pll(sc, sents, batch_size=64)["pll"].to_numpy()
    np.testing.assert_allclose(one, many, atol=1e-4)
    assert np.all(one < 0)


def test_bad_contexts_and_targets(bias_only):
    sc = C.mlm_scorer(bias_only)
    with pytest.raises(ValueError, match="context 1 must contain exactly one"):
        C.cloze(sc, ["a [MASK] b", "no mask here"])
    with pytest.raises(ValueError, match="context 0 must contain exactly one .*found 2"):
        C.cloze(sc, ["[MASK] and [MASK]"])
    with pytest.raises(ValueError, match="one list of words per context"):
        C.cloze(sc, ["a [MASK]"], [["x"], ["y"]])
    with pytest.raises(ValueError, match="multi_piece"):
        C.cloze(sc, ["a [MASK]"], multi_piece="average")
    with pytest.raises(ValueError, match="non-empty"):
        C.pll(sc, ["fine", ""])


def test_heads_and_controls(minilm, bias_only):
    with pytest.raises(MissingHeadError, match="'minilm' has no masked-LM head"):
        C.get_scorer(minilm, source="mlm")
    with pytest.raises(ValueError, match="source must be one of"):
        C.get_scorer(minilm, source="best")
    assert C.get_scorer(bias_only).source == "mlm"
    ctrl = C.get_scorer(bias_only, source="control", seed=4)
    assert ctrl.source == "control" and ctrl.label == "random-init control (seed 4)"
    a = C.pll(ctrl, ["the cat sat ."])["pll"].iloc[0]
    b = C.pll(C.control_scorer(bias_only, seed=4), ["the cat sat ."])["pll"].iloc[0]
    c = C.pll(C.control_scorer(bias_only, seed=5), ["the cat sat ."])["pll"].iloc[0]
    assert a == b and a != c


# ----------------------------------------------------------------------------- fitted readout


def test_readout_recovers_a_planted_mapping():
    """States are the embedding of the original token plus noise: the readout must decode them."""
    from bertology.readout import top1_accuracy, train_readout

    g = torch.Generator().manual_seed(0)
    E = torch.randn(60, 16, generator=g)
    y = torch.randint(0, 60, (3000,), generator=g)
    X = E[y] + 0.1 * torch.randn(3000, 16, generator=g)
    head, info = train_readout(X[:2000], y[:2000], E, epochs=10, batch_size=256, lr=3e-3, progress=False)
    assert top1_accuracy(head, X[2000:], y[2000:]) > 0.95
    assert info["n_train_types"] == 60 and len(info["train_loss"]) == 10
    # a head that never saw the mapping (no ridge start, no training) is at chance
    rand, _ = train_readout(X[:10], y[:10], E, epochs=0, ridge=None, progress=False)
    assert top1_accuracy(rand, X[2000:], y[2000:]) < 0.2


def test_readout_fit_cache_and_label(tokenizer, tmp_path, monkeypatch):
    from bertology import readout as R

    m = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, mlm=False, seed=0)
    settings = R.FitSettings(data="sample", n_sentences=40, n_dev=20, epochs=1)
    head, meta = R.get_readout(m, 2, cache_dir=tmp_path, settings=settings, progress=False)
    assert meta["label"].startswith("fitted readout on layer 2 of random-bert-2x2 (bertology sample treebank")
    assert meta["n_train_tokens"] >= 40 and 0 <= meta["dev_top1"] <= 1
    assert len(list((tmp_path / "readouts").glob("*.safetensors"))) == 1

    def no_fit(*a, **k):
        raise AssertionError("the cached head should have been used")

    monkeypatch.setattr(R, "fit_readouts", no_fit)
    again, meta2 = R.get_readout(m, 2, cache_dir=tmp_path, settings=settings)
    assert meta2 == meta
    for (n, a), (_, b) in zip(head.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    sc = R.ReadoutScorer(m, 2, again, meta2)
    lp = sc.log_probs(torch.tensor([[101, 103, 102]]), torch.ones(1, 3, dtype=torch.long), torch.tensor([[0, 1]]))
    assert lp.shape == (1, len(tokenizer)) and torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        R.get_readout(m, 3, cache_dir=tmp_path, settings=settings)


def test_readout_scorer_reads_its_layer_without_the_layers_above(tokenizer):
    """A readout on layer k scores the full pass's states of layer k at the masked rows, and the
    layers above k do not run."""
    from bertology import readout as R
    from bertology.extract import layer_stack

    m = random_bert(tokenizer, n_layers=3, n_heads=2, hidden_size=16, mlm=False, seed=3)
    ids = torch.tensor([[101, 2023, 103, 2003, 102], [101, 103, 102, 0, 0]])
    att = (ids > 0).long()
    where = torch.tensor([[0, 2], [1, 1], [0, 3]])
    with torch.inference_mode():
        hs = m.model(input_ids=ids, attention_mask=att, output_hidden_states=True).hidden_states
    ran = []
    for d, layer in enumerate(layer_stack(m.model).layer):
        layer.register_forward_hook(lambda *_, d=d: ran.append(d))
    for k in range(4):
        head = torch.nn.Linear(16, len(tokenizer))
        sc = R.ReadoutScorer(m, k, head, {"label": "test"})
        ran.clear()
        lp = sc.log_probs(ids, att, where)
        want = torch.log_softmax(head(hs[k][where[:, 0], where[:, 1]]), -1)
        torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-5)
        assert ran == list(range(k - 1)), (k, ran)  # layer k itself runs at the read rows only


def test_shipped_minilm_readout_loads(minilm):
    from bertology.readout import shipped_readouts

    shipped = shipped_readouts(minilm)
    assert shipped is not None, "no shipped readout matches this MiniLM revision: run `bertology fit-readout --model minilm --layers all`"
    last = str(minilm.info.n_layers)
    assert last in shipped[1]["layers"] and "fitted" in shipped[1]["what"]
    sc = C.get_scorer(minilm)  # no MLM head -> the fitted readout on the last layer
    assert sc.source == "readout" and sc.label.startswith("fitted readout on layer 6 of minilm")
    # the last layer decodes masked tokens better than always answering the most frequent token
    info = shipped[1]["layers"][last]
    assert info["dev_top1"] > info["dev_top1_majority"]
    r = C.cloze(sc, ["The capital of France is [MASK] ."], [["paris"]], k=3)
    assert len(r.top) == 3 and r.label == sc.label


def test_scorer_methods_cloze_topk_pll(bias_only, tokenizer, logz):
    """Every scorer answers the three questions as methods (the scorers room), by hand on bias logits."""
    sc = C.mlm_scorer(bias_only)
    r = sc.cloze(["The capital of France is [MASK]."], [["paris", "berlin"]], k=0)
    assert r.targets["logprob"].tolist() == pytest.approx([3 - logz, -logz], abs=1e-4) and r.top.empty
    top = sc.topk(["The capital of France is [MASK].", "[MASK] here"], k=2)
    assert top["token"].tolist() == ["paris", "london"] * 2 and top["item"].tolist() == [0, 0, 1, 1]
    assert top["logprob"].tolist()[:2] == pytest.approx([3 - logz, 1 - logz], abs=1e-4)
    assert sc.topk(["A [MASK]."], k=1, vocab=["berlin", "london"])["token"].tolist() == ["london"]
    with pytest.raises(ValueError, match="k must be"):
        sc.topk(["A [MASK]."], k=0)
    # PLL: every piece masked in turn; each is 0 bias except 'paris' (3) -> sum of (bias - logZ)
    p = sc.pll(["paris is big"])
    assert p["n_pieces"].tolist() == [3]
    assert p["pll"].iloc[0] == pytest.approx(3 - 3 * logz, abs=1e-3)
    assert p.equals(C.pll(sc, ["paris is big"]))


def test_targets_of_one_context_share_one_forward_pass(bias_only, tokenizer):
    """Single-piece targets of a context mask the same sequence: it runs once for all of them (and
    for the context's top-k), with the same numbers as one target at a time."""
    sc = LeftEcho(bias_only)
    lz = math.log(math.exp(2) + len(tokenizer) - 1)
    contexts = ["you say [MASK] again", "we [MASK] it"]
    targets = [["no", "say", "again"], ["we", "no no"]]
    r = C.cloze(sc, contexts, targets, k=2, batch_size=2)
    # distinct sequences: one per context (top-k and single-piece targets) + two steps of "no no"
    assert len(sc.seen) == 4
    t = r.targets.set_index(["item", "target"])
    assert t.loc[(0, "say"), "logprob"] == pytest.approx(2 - lz, abs=1e-4) and t.loc[(0, "say"), "rank"] == 1
    assert t.loc[(0, "no"), "logprob"] == pytest.approx(0 - lz, abs=1e-4)
    assert t.loc[(1, "we"), "logprob"] == pytest.approx(2 - lz, abs=1e-4)
    assert t.loc[(1, "no no"), "logprob"] == pytest.approx((0 - lz) + (2 - lz), abs=1e-4)
    assert r.top.query("rank == 1")["token"].tolist() == ["say", "we"]
    for i, (c, ts) in enumerate(zip(contexts, targets)):  # one target at a time: same numbers
        for w in ts:
            alone = C.cloze(LeftEcho(bias_only), [c], [[w]], k=0, batch_size=1).targets
            assert alone["logprob"].iloc[0] == pytest.approx(t.loc[(i, w), "logprob"], abs=1e-6)


def test_masked_log_probs_covers_every_sequence_once(bias_only, tokenizer):
    from bertology.scorers import masked_log_probs

    sc = LeftEcho(bias_only)
    a, b = tokenizer("you say it")["input_ids"], tokenizer("we say it again")["input_ids"]
    seqs, pos = [a, b, a, a, b], [2, 2, 2, 3, 2]
    seen = {}
    for idx, out in masked_log_probs(sc, seqs, pos, batch_size=2):
        assert out.shape == (len(idx), len(tokenizer))
        for r, row in zip(idx.tolist(), out):
            assert r not in seen
            seen[r] = int(row.argmax())  # LeftEcho: the token left of the position
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [seen[r] for r in range(5)] == [seqs[r][pos[r] - 1] for r in range(5)]
    assert len(sc.seen) == 3  # (a, 2) ran once for rows 0 and 2
    with pytest.raises(ValueError, match="positions"):
        next(masked_log_probs(sc, seqs, pos[:2]))
