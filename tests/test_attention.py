import numpy as np
import pandas as pd
import pytest
import torch

from bertology import attention as at
from bertology import extract as ex

# [CLS] the cat sat . [SEP]  (n=6)   and   [CLS] dogs bark [SEP]  (n=4)
SENTS = [["the", "cat", "sat", "."], ["dogs", "bark"]]


def _patterns(planted, **kw):
    red = at.AttentionPatterns(planted.info.n_layers, planted.info.n_heads, **kw)
    ex.extract(planted, SENTS, red, level="token", progress=False)
    wide = red.result().pivot_table(index=["layer", "head"], columns="metric", values="value")
    return wide.loc[1]  # layer 2; both layers are planted alike


@pytest.fixture
def patterns(planted):
    """The authors' definitions (per-input means, their denominators and entropy smoothing)."""
    return _patterns(planted)


def smoothed_entropy(row, eps=1e-4):
    """Entropy (nats) of one attention row after the authors' smoothing 0.9999 p + 0.0001 / n."""
    q = (1 - eps) * np.asarray(row, float) + eps / len(row)
    return float(-(q * np.log(q)).sum())


def one_hot(n):
    return [1.0] + [0.0] * (n - 1)


def test_tokens_are_single_pieces(tokenizer):
    assert tokenizer.tokenize("the cat sat . dogs bark") == ["the", "cat", "sat", ".", "dogs", "bark"]


# Inputs of n = 6 and n = 4 positions; the authors average over the positions of an input, then
# over inputs, and divide previous/next sums by n (the first/last query counts with 0).

def test_cls_head(patterns):
    h = patterns.loc[0]
    assert h.to_cls == pytest.approx(1.0)
    assert h.to_sep == pytest.approx(0.0)
    # only query 1 has [CLS] as its previous token: 1/6 and 1/4 (pooled with n-1 it was 2/8)
    assert h.to_prev == pytest.approx((1 / 6 + 1 / 4) / 2)
    # every row is one-hot: smoothed entropy, not 0
    assert h.entropy == pytest.approx((smoothed_entropy(one_hot(6)) + smoothed_entropy(one_hot(4))) / 2, rel=1e-9)
    assert h.entropy > 1e-4


def test_previous_token_head(patterns):
    h = patterns.loc[1]
    assert h.to_prev == pytest.approx((5 / 6 + 3 / 4) / 2)  # [CLS] has no previous token: counts 0
    assert h.to_next == pytest.approx(0.0)
    assert h.to_self == pytest.approx((1 / 6 + 1 / 4) / 2)  # [CLS] attends to itself
    assert h.to_punct == pytest.approx((1 / 6 + 0) / 2)  # [SEP] of sentence 1 looks back at "."


def test_uniform_head(patterns):
    h = patterns.loc[2]
    assert h.to_cls == pytest.approx((1 / 6 + 1 / 4) / 2)  # every input weighs the same
    assert h.to_punct == pytest.approx((1 / 6 + 0) / 2)
    assert h.entropy == pytest.approx((np.log(6) + np.log(4)) / 2)  # smoothing leaves uniform rows alone
    assert h.uniform_entropy == pytest.approx(h.entropy)
    assert h.sep_to_sep == pytest.approx((1 / 6 + 1 / 4) / 2)
    assert h.entropy_from_cls == pytest.approx((np.log(6) + np.log(4)) / 2)


def test_last_token_head(patterns):
    h = patterns.loc[3]
    assert h.to_sep == pytest.approx(1.0) and h.sep_to_sep == pytest.approx(1.0)
    assert h.other_to_sep == pytest.approx(1.0)
    assert h.to_next == pytest.approx((1 / 6 + 1 / 4) / 2) and h.to_self == pytest.approx((1 / 6 + 1 / 4) / 2)


def test_pooled_option_weighs_positions(planted):
    """``average="pooled"``: sums over both inputs over summed denominators (6 + 4 positions)."""
    p = _patterns(planted, average="pooled", entropy_smoothing=0.0)
    assert p.loc[2, "to_cls"] == pytest.approx((6 / 6 + 4 / 4) / 10)
    assert p.loc[2, "entropy"] == pytest.approx((6 * np.log(6) + 4 * np.log(4)) / 10)
    assert p.loc[1, "to_prev"] == pytest.approx((5 + 3) / 10)
    assert p.loc[0, "entropy"] == pytest.approx(0.0)  # no smoothing: one-hot rows have entropy 0
    assert p.loc[2, "sep_to_sep"] == pytest.approx((1 / 6 + 1 / 4) / 2)  # one [SEP] query per input
    with pytest.raises(ValueError, match="average"):
        at.AttentionPatterns(2, 4, average="tokens")


def test_two_segment_denominators_and_options():
    """[CLS] a [SEP] b [SEP]: [SEP]->[SEP] over the 2 [SEP] queries, other->[SEP] over n - 2 = 3."""
    from bertology.align import CLS, SEP, WORD

    class Enc:
        unit_kind = [CLS, WORD, SEP, WORD, SEP]
        tokens = ["[CLS]", "a", "[SEP]", "b", "[SEP]"]
        n_tokens = 5

    a = np.zeros((1, 1, 5, 5))
    a[0, 0, :, 2] = [1.0, 0.5, 1.0, 0.0, 0.5]  # to the first [SEP]
    a[0, 0, :, 0] = 1 - a[0, 0, :, 2]
    red = at.AttentionPatterns(1, 1)
    red.update(ex.Item(index=0, encoding=Enc(), attention=a, hidden=None))
    v = red.result().set_index("metric")["value"]
    assert v["sep_to_sep"] == pytest.approx((1.0 + 0.5) / 2)
    assert v["other_to_sep"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert v["to_sep"] == pytest.approx(3.0 / 5)
    assert red.options == {"average": "per_input", "entropy_smoothing": 1e-4}


def test_notable_heads_pick_the_planted_ones(planted):
    red = at.AttentionPatterns(2, 4)
    ex.extract(planted, SENTS, red, level="token", progress=False)
    nh = at.notable_heads(red.result()).set_index("behaviour")
    assert nh.loc["previous token", "head"] == 1 and nh.loc["[SEP]", "head"] == 3
    assert nh.loc["broad", "head"] == 2 and nh.loc["[CLS]", "label"] == "1-1"


def test_attention_gradient_matches_finite_difference(tokenizer):
    """dL/dα from autograd equals (L(α + ε e_qk) - L(α - ε e_qk)) / 2ε on a planted model."""
    from bertology.models import plant_attention, random_bert

    base = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=16, mlm=True, seed=1)
    bump = {"eps": 0.0}

    def pattern(layer, ids, mask):
        B, T = ids.shape
        w = torch.full((B, 2, T, T), 1.0 / T, dtype=torch.float64)
        w[0, 1, 2, 4] += bump["eps"]
        return w

    m = plant_attention(base, pattern)
    m.model.double()
    encs = ex.encode_inputs(tokenizer, [["the", "cat", "sat", "."]], 64)
    inputs = ex.collate(encs, "cpu")
    masked = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    masked[0, 2] = True
    grad = at.attention_gradients(m, inputs, masked, at.MLM_OBJECTIVE)[0][0, 1, 2, 4].item()

    def loss(eps):
        bump["eps"] = eps
        ids = inputs["input_ids"].masked_fill(masked, tokenizer.mask_token_id)
        with torch.no_grad():
            logits = m.model(**dict(inputs, input_ids=ids)).logits
        return torch.nn.functional.cross_entropy(logits[masked], inputs["input_ids"][masked]).item()

    fd = (loss(1e-4) - loss(-1e-4)) / 2e-4
    assert grad == pytest.approx(fd, rel=1e-4, abs=1e-8) and abs(grad) > 1e-6


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_mlm_gradients_read_the_head_at_masked_pieces_only(arch):
    """dL/dα with the head on the masked pieces only equals the reference formula on the full
    logits, and the head maps exactly the masked pieces (BERT: one-module head; DistilBERT: a
    head split over several modules)."""
    from types import SimpleNamespace

    from test_extract import HeadCalls, tiny_mlm_model

    from bertology.models import LoadedModel

    model, batch = tiny_mlm_model(arch)
    model.double()

    class Tok:
        mask_token_id = 4

    loaded = LoadedModel(Tok(), model, SimpleNamespace(precision="float32"))
    masked = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    masked[0, [1, 5]] = masked[1, 3] = masked[2, 2] = True
    calls = HeadCalls(model)
    got = at.attention_gradients(loaded, batch, masked, at.MLM_OBJECTIVE, n_masked=7)
    assert calls.rows == 4
    with torch.enable_grad():  # the reference: every position's logits, the masked ones read
        ids = batch["input_ids"].masked_fill(masked, 4)
        out = model(**dict(batch, input_ids=ids), output_attentions=True)
        loss = torch.nn.functional.cross_entropy(out.logits[masked], batch["input_ids"][masked], reduction="sum") / 7
        ref = torch.autograd.grad(loss, out.attentions)
    assert all(a.abs().max() > 0 for a in ref)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b.float(), rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def tiny_mlm(tokenizer):
    from bertology.models import random_bert

    lm = random_bert(tokenizer, n_layers=2, n_heads=4, hidden_size=16, mlm=True, seed=7)
    lm.model.double()
    return lm


@pytest.mark.parametrize("objective", ["mlm", "reconstruction"])
def test_gradient_importance_does_not_depend_on_batching(tiny_mlm, objective):
    """L is the mean loss over every masked piece of the study, so the batch an input lands in
    changes neither its masked pieces nor its |dL/dα| (a per-batch mean would weigh it by 1 / the
    batch's masked pieces)."""
    words = [["the", "cat", "sat", "on", "the", "mat", "."], ["dogs", "bark", ","], ["a", "b", "c", "d", "e"],
             [f"w{i}" for i in range(14)], ["x", "y"]]
    encs = ex.encode_inputs(tiny_mlm.tokenizer, words, 64)
    one, _ = at.gradient_importance(tiny_mlm, encs, objective=objective, batch_size=1, seed=3, progress=False)
    many, _ = at.gradient_importance(tiny_mlm, encs, objective=objective, batch_size=8, seed=3, progress=False)
    assert (one["n"] == many["n"]).all()
    assert np.allclose(one["value"], many["value"], rtol=1e-5, atol=0)  # float32 gradients


def test_gradient_importance_table(planted, minilm):
    encs = ex.encode_inputs(planted.tokenizer, [(["the", "cat", "sat", "."], ["dogs", "bark", ","])], 64)
    df, obj = at.gradient_importance(planted, encs, seed=0, progress=False)
    assert obj.name == "mlm" and set(df.category) == {"[SEP]", "punctuation", "other"}
    # 10 real queries x keys: 2 [SEP], 2 punctuation, 6 other, per layer (heads averaged)
    assert df.set_index(["layer", "category"]).loc[(0, "[SEP]"), "n"] == 10 * 2
    assert df.set_index(["layer", "category"]).loc[(0, "other"), "n"] == 10 * 6
    assert (df["value"] > 0).all()
    df2, obj2 = at.gradient_importance(minilm, ex.encode_inputs(minilm.tokenizer, [["a", "b", "c"]], 64),
                                       progress=False)
    assert obj2.name == "reconstruction" and len(df2) == 3 * 6
    from bertology.models import MissingHeadError
    with pytest.raises(MissingHeadError):
        at.gradient_importance(minilm, encs, objective="mlm")
