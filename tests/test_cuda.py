"""The engine on a GPU: what differs from the CPU path (devices of planted maps, head masks, probes,
timings). Every test here but the first needs CUDA and is skipped without it; run them where a GPU
is lent (``pytest tests/test_cuda.py``), together with the notebook run in README "Speed and memory"."""
import numpy as np
import pytest
import torch

from bertology import models, pruning
from bertology.extract import encode_inputs, forward, padded_batches
from bertology.models import plant_attention, random_bert, resolve_device, set_head_mask

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

SENTENCES = [["the", "dog", "barked", "at", "the", "mailman", "."], ["it", "rained", "."]]


def test_resolve_device_names_the_devices_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:1'.*1 CUDA device\(s\): cuda:0 to cuda:0"):
        resolve_device("cuda:1")


def _batch(lm):
    encs = encode_inputs(lm.tokenizer, SENTENCES, 64)
    _, ids, mask = next(iter(padded_batches([e.input_ids for e in encs], batch_size=8)))
    return {"input_ids": ids, "attention_mask": mask}


@gpu
def test_a_pattern_built_on_the_cpu_is_planted_on_the_gpu():
    def to_first(layer, ids, mask):  # built on the CPU, as a user's pattern usually is
        w = torch.zeros(ids.shape[0], 2, ids.shape[1], ids.shape[1])
        w[..., 0] = 1.0
        return w

    lm = plant_attention(random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=0, device="cuda"), to_first)
    att = forward(lm, _batch(lm), attention=True).attentions[0]
    assert att.device.type == "cuda"
    assert torch.equal(att[..., 0].cpu(), torch.ones_like(att[..., 0].cpu()))


@gpu
def test_a_cpu_head_mask_on_a_gpu_model_equals_the_cpu_run():
    cpu = random_bert(n_layers=2, n_heads=2, hidden_size=16, seed=0)
    gpu_lm = random_bert(n_layers=2, n_heads=2, hidden_size=16, seed=0, device="cuda")
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # on the CPU
    for lm in (cpu, gpu_lm):
        set_head_mask(lm.model, mask)
    b = _batch(cpu)
    a = forward(cpu, b, base=True).last_hidden_state
    g = forward(gpu_lm, b, base=True).last_hidden_state.cpu()
    assert torch.allclose(a, g, atol=1e-4)


@gpu
def test_the_upos_task_trains_its_probe_and_scores_on_the_gpu():
    from bertology.data import load_treebank

    sents = load_treebank("sample", "dev")
    lm = random_bert(n_layers=2, n_heads=2, hidden_size=16, seed=0, device="cuda")
    task = pruning.build_task(lm, "upos", sents[:8], train_sentences=sents[8:24])
    value = pruning.evaluate(lm, task, None)
    assert 0.0 <= value <= 1.0


@gpu
def test_forward_timing_waits_for_the_gpu(monkeypatch):
    monkeypatch.delenv("BERTOLOGY_TIMINGS", raising=False)  # the forward pass's own timing would sync too
    lm = random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=0, device="cuda")
    calls = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (calls.append(device), real(device)))
    seconds = pruning.time_forward(lm.model, [_batch(lm)], repeats=2)
    assert seconds > 0 and len(calls) == 4  # before and after each repeat
    assert np.isfinite(seconds)


@gpu
def test_float16_gradient_passes_run_in_float32():
    lm = models.set_precision(random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=0, device="cuda"), "float16")
    out = forward(lm, _batch(lm), attention=True, grad=True)
    assert out.attentions[0].dtype == torch.float32


@gpu
def test_float16_structural_probes_train_as_float32():
    from bertology import structural_probe as sp

    from test_structural_probe import _planted_states

    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(15, 15)))
    train, dev = _planted_states(rng, 60, Q), _planted_states(rng, 20, Q)
    fit = dict(rank=15, lr=0.05, max_epochs=3, batch_size=20, layers=[1], progress=False, device="cuda")
    p16 = sp.fit_probe(train, dev, "distance", precision="float16", **fit)
    p32 = sp.fit_probe(train, dev, "distance", **fit)
    np.testing.assert_array_equal(p16.B, p32.B)
