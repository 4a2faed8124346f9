import numpy as np
import pandas as pd
import pytest
import torch

from bertology import attention as at
from bertology import extract as ex

# [CLS] the cat sat . [SEP]  (n=6)   and   [CLS] dogs bark [SEP]  (n=4)
SENTS = [["the", "cat", "sat", "."], ["dogs", "bark"]]


@pytest.fixture
def patterns(planted):
    red = at.AttentionPatterns(planted.info.n_layers, planted.info.n_heads)
    ex.extract(planted, SENTS, red, level="token", progress=False)
    wide = red.result().pivot_table(index=["layer", "head"], columns="metric", values="value")
    return wide.loc[1]  # layer 2; both layers are planted alike


def test_tokens_are_single_pieces(tokenizer):
    assert tokenizer.tokenize("the cat sat . dogs bark") == ["the", "cat", "sat", ".", "dogs", "bark"]


def test_cls_head(patterns):
    h = patterns.loc[0]
    assert h.to_cls == pytest.approx(1.0)
    assert h.to_sep == pytest.approx(0.0) and h.entropy == pytest.approx(0.0)
    assert h.to_prev == pytest.approx(2 / 8)  # only query 1 has its previous token = [CLS]; 5 + 3 queries


def test_previous_token_head(patterns):
    h = patterns.loc[1]
    assert h.to_prev == pytest.approx(1.0) and h.to_next == pytest.approx(0.0)
    assert h.to_self == pytest.approx(2 / 10)  # [CLS] attends to itself, 6 + 4 queries
    assert h.to_punct == pytest.approx(1 / 10)  # [SEP] of sentence 1 looks back at "."


def test_uniform_head(patterns):
    h = patterns.loc[2]
    assert h.to_cls == pytest.approx((6 / 6 + 4 / 4) / 10)
    assert h.to_punct == pytest.approx((6 * (1 / 6)) / 10)
    assert h.entropy == pytest.approx((6 * np.log(6) + 4 * np.log(4)) / 10)
    assert h.uniform_entropy == pytest.approx(h.entropy)
    assert h.sep_to_sep == pytest.approx((1 / 6 + 1 / 4) / 2)
    assert h.entropy_from_cls == pytest.approx((np.log(6) + np.log(4)) / 2)


def test_last_token_head(patterns):
    h = patterns.loc[3]
    assert h.to_sep == pytest.approx(1.0) and h.sep_to_sep == pytest.approx(1.0)
    assert h.other_to_sep == pytest.approx(1.0)
    assert h.to_next == pytest.approx(2 / 8) and h.to_self == pytest.approx(2 / 10)


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
