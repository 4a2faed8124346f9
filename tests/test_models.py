import pytest
import torch

from bertology.models import (MissingHeadError, ModelLoadError, load_model, random_bert,
                              random_init_control, set_head_mask)


def test_default_model_facts(minilm):
    info = minilm.info
    assert (info.n_layers, info.n_heads, info.hidden_size) == (6, 12, 384)
    assert info.uncased and not info.has_mlm_head and info.max_length == 512
    assert info.revision.startswith("local-")
    assert minilm.model.config._attn_implementation == "eager"


def test_every_layer_returns_attention(minilm):
    enc = minilm.tokenizer(["a short sentence"], return_tensors="pt")
    out = minilm.model(**enc, output_attentions=True)
    assert len(out.attentions) == 6
    assert torch.allclose(out.attentions[5].sum(-1), torch.ones(1, 12, 5), atol=1e-5)


def test_unknown_name_error_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_model("no-such-org/no-such-model")
    msg = str(err.value)
    assert "local directory" in msg and "Hugging Face" in msg and "'minilm'" in msg


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_mlm_required_but_missing(minilm):
    with pytest.raises(MissingHeadError, match="masked-LM head"):
        load_model("minilm", mlm=True)


def test_local_checkpoint_roundtrip_with_and_without_head(tmp_path, tokenizer):
    """The from_pretrained path real users take, on checkpoints saved here."""
    with_head = random_bert(tokenizer, mlm=True, seed=3)
    with_head.model.save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    loaded = load_model(str(tmp_path / "mlm"), device="cpu")
    assert loaded.info.has_mlm_head and loaded.info.slug == "mlm"
    w0 = with_head.model.cls.predictions.transform.dense.weight
    assert torch.equal(loaded.model.cls.predictions.transform.dense.weight, w0)

    bare = random_bert(tokenizer, mlm=False, seed=3)
    bare.model.save_pretrained(tmp_path / "bare")
    tokenizer.save_pretrained(tmp_path / "bare")
    assert not load_model(str(tmp_path / "bare")).info.has_mlm_head
    with pytest.raises(MissingHeadError):
        load_model(str(tmp_path / "bare"), mlm=True)


def test_random_control_same_shape_new_weights(minilm):
    ctrl = random_init_control(minilm, seed=1)
    assert ctrl.info.random_init and ctrl.info.n_layers == 6 and ctrl.info.n_heads == 12
    w_real = minilm.model.encoder.layer[0].attention.self.query.weight
    w_rand = ctrl.model.encoder.layer[0].attention.self.query.weight
    assert w_real.shape == w_rand.shape and not torch.allclose(w_real, w_rand)
    again = random_init_control(minilm, seed=1)
    assert torch.equal(again.model.encoder.layer[0].attention.self.query.weight, w_rand)


def test_planted_attention_is_what_the_model_returns(planted):
    enc = planted.tokenizer(["the cat sat .", "dogs bark"], return_tensors="pt", padding=True)
    att = planted.model(**enc, output_attentions=True).attentions
    # sentence 2 has 4 real tokens: head 3 attends to position 3 (its [SEP]), head 0 to [CLS]
    assert torch.equal(att[1][1, 3, :, 3], torch.ones(6))
    assert torch.equal(att[0][0, 0, :, 0], torch.ones(6))
    assert torch.allclose(att[0][1, 2, 0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0, 0]))


def test_head_mask_zero_equals_removing_head_output(tokenizer):
    m = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=8, mlm=False, seed=0)
    enc = tokenizer(["hello there"], return_tensors="pt")
    captured = {}
    h = m.model.encoder.layer[0].attention.output.dense.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("ctx", inp[0].detach().clone()))
    mask = torch.tensor([[1.0, 0.0]])
    set_head_mask(m.model, mask)
    m.model(**enc)
    h.remove()
    # context vector = concat of heads; head 2's 4 dims must be exactly zero, head 1's not
    ctx = captured["ctx"][0]
    assert torch.count_nonzero(ctx[:, 4:]) == 0 and torch.count_nonzero(ctx[:, :4]) > 0
    set_head_mask(m.model, None)
