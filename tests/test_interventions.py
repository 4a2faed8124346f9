"""The interventions room: head masks and skipped layers last exactly as long as their ``with``."""
import copy

import pytest
import torch

from bertology.extract import collate, encode_inputs, forward
from bertology.interventions import head_mask_of, masked_heads, skipped_layers
from bertology.models import LoadedModel, random_bert


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return random_bert(tokenizer, n_layers=2, n_heads=4, hidden_size=16, mlm=False, seed=1)


@pytest.fixture(scope="module")
def batch(tiny):
    encs = encode_inputs(tiny.tokenizer, [["the", "cat", "sat"], ["a", "dog"]], 64)
    return collate(encs, tiny.device)


def _all_none(lm):
    return all(m is None for m in head_mask_of(lm))


def test_mask_is_restored_after_an_exception(tiny):
    mask = torch.ones(2, 4)
    mask[1, 2] = 0
    with pytest.raises(RuntimeError, match="boom"):
        with masked_heads(tiny, mask):
            assert head_mask_of(tiny)[1].tolist() == [1.0, 1.0, 0.0, 1.0]
            raise RuntimeError("boom")
    assert _all_none(tiny)


def test_nested_masks_restore_the_outer_one(tiny, batch):
    outer, inner = torch.ones(2, 4), torch.ones(2, 4)
    outer[0, 0] = 0
    inner[1, 3] = 0
    with masked_heads(tiny, outer):
        with masked_heads(tiny.model, inner):  # a bare model works too
            assert head_mask_of(tiny)[1].tolist() == [1.0, 1.0, 1.0, 0.0]
            assert head_mask_of(tiny)[0].tolist() == [1.0, 1.0, 1.0, 1.0]
        assert head_mask_of(tiny)[0].tolist() == [0.0, 1.0, 1.0, 1.0]
        with masked_heads(tiny, None):  # the full model inside a masked block
            assert _all_none(tiny)
            full = forward(tiny, batch, base=True).last_hidden_state
        assert head_mask_of(tiny)[0][0].item() == 0.0
    assert _all_none(tiny)
    assert torch.equal(full, forward(tiny, batch, base=True).last_hidden_state)


def test_a_bad_shape_changes_nothing(tiny):
    with masked_heads(tiny, torch.ones(2, 4)):
        with pytest.raises(ValueError, match="shape"):
            with masked_heads(tiny, torch.ones(3, 4)):
                pass
        assert all(m is not None for m in head_mask_of(tiny))
    assert _all_none(tiny)


def test_masked_head_equals_a_head_whose_values_are_zeroed(tiny, batch):
    """Head h's output is attention x V; zeroing h's value rows gives what mask[l, h] = 0 gives."""
    layer, head, d = 1, 2, 16 // 4
    mask = torch.ones(2, 4)
    mask[layer, head] = 0
    with masked_heads(tiny, mask):
        masked = forward(tiny, batch, base=True).last_hidden_state
    zeroed = copy.deepcopy(tiny.model)
    value = zeroed.encoder.layer[layer].attention.self.value
    with torch.no_grad():
        value.weight[head * d:(head + 1) * d] = 0
        value.bias[head * d:(head + 1) * d] = 0
    manual = forward(LoadedModel(tiny.tokenizer, zeroed, tiny.info), batch, base=True).last_hidden_state
    full = forward(tiny, batch, base=True).last_hidden_state
    keep = batch["attention_mask"].bool()
    assert torch.allclose(masked[keep], manual[keep], atol=1e-6)
    assert not torch.allclose(masked[keep], full[keep], atol=1e-4)


def test_skipping_every_layer_leaves_the_embeddings_and_is_undone(tiny, batch):
    emb = forward(tiny, batch, hidden_states=True).hidden_states[0]
    with pytest.raises(KeyError):
        with skipped_layers(tiny, [0, 1]):
            assert len(tiny.model.encoder.layer) == 0
            assert torch.equal(forward(tiny, batch, base=True).last_hidden_state, emb)
            raise KeyError("x")
    assert len(tiny.model.encoder.layer) == 2
    with skipped_layers(tiny, [1]):
        one = forward(tiny, batch, base=True).last_hidden_state
    assert torch.allclose(one, forward(tiny, batch, hidden_states=True).hidden_states[1])
    with pytest.raises(ValueError, match="out of range"):
        with skipped_layers(tiny, [2]):
            pass


def test_forward_is_inference_unless_grad(tiny, batch):
    out = forward(tiny, batch, base=True)
    assert out.last_hidden_state.is_inference()
    out = forward(tiny, batch, attention=True, grad=True)
    assert out.last_hidden_state.requires_grad and len(out.attentions) == 2
    g = torch.autograd.grad(out.last_hidden_state.sum(), out.attentions[0])[0]
    assert g.shape == out.attentions[0].shape
