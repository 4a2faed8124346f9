"""Compute precision: float32 by default (the authors'), bfloat16 autocast as a named, declared option."""
import json
import math

import numpy as np
import pytest
import torch

from bertology import extract
from bertology.attention import gradient_importance
from bertology.extract import encode_inputs, forward, padded_batches
from bertology.models import check_precision, random_bert, random_init_control, set_precision
from bertology.notebook import ParameterError, start
from bertology.scorers import control_scorer


@pytest.fixture(scope="module")
def lm():
    return random_bert(n_layers=2, n_heads=2, hidden_size=32, mlm=True, seed=1)


SENTENCES = [["the", "dog", "barked", "at", "the", "mailman", "."], ["it", "rained", "."]]


@pytest.fixture(scope="module")
def batch(lm):
    encs = encode_inputs(lm.tokenizer, SENTENCES, 64)
    _, ids, mask = next(iter(padded_batches([e.input_ids for e in encs], batch_size=8)))
    return {"input_ids": ids, "attention_mask": mask}


def test_check_precision_names_the_choices():
    assert check_precision("float32") == "float32"
    assert check_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_precision("float16", "cpu")


def test_bfloat16_runs_under_autocast_and_hands_back_float32(lm, batch):
    lb = set_precision(lm, "bfloat16")
    assert lb.info.precision == "bfloat16" and lm.info.precision == "float32"  # the original is untouched
    a = forward(lm, batch, attention=True, hidden_states=True)
    b = forward(lb, batch, attention=True, hidden_states=True)
    for x, y in [(a.logits, b.logits), *zip(a.attentions, b.attentions), *zip(a.hidden_states, b.hidden_states)]:
        assert y.dtype == torch.float32 and y.shape == x.shape
    # bfloat16 keeps 8 bits of mantissa: products differ from float32, but only slightly
    diff = max((x - y).abs().max().item() for x, y in zip(a.attentions, b.attentions))
    assert 0 < diff < 0.02
    rows = b.attentions[-1].sum(-1)[batch["attention_mask"].bool()[:, None, :].expand(-1, 2, -1)]
    np.testing.assert_allclose(rows.numpy(), 1.0, atol=1e-2)  # still distributions


def test_bare_module_copies_keep_the_precision(lm, batch):
    """Pruning hands the engine a bare (copied) module: it must compute in the run's precision too."""
    import copy

    lb = set_precision(lm, "bfloat16")
    out_loaded = forward(lb, batch).logits
    out_copy = forward(copy.deepcopy(lb.model), batch).logits
    torch.testing.assert_close(out_copy, out_loaded)
    set_precision(lm, "float32")  # the module flag is shared with the fixture: put it back
    assert not torch.equal(forward(lm.model, batch).logits, out_loaded)


def test_controls_inherit_the_precision(lm):
    lb = set_precision(lm, "bfloat16")
    try:
        assert random_init_control(lb).info.precision == "bfloat16"
        assert control_scorer(lb).loaded.info.precision == "bfloat16"
    finally:
        set_precision(lm, "float32")
    assert lm.model.bertology_precision == "float32"


def test_gradients_flow_under_bfloat16(lm):
    lb = set_precision(lm, "bfloat16")
    try:
        grads, _ = gradient_importance(lb, encode_inputs(lm.tokenizer, SENTENCES, 64), seed=0, progress=False)
        assert len(grads) and np.isfinite(grads["value"].to_numpy()).all() and (grads["value"] > 0).any()
    finally:
        set_precision(lm, "float32")


def test_gradients_flow_under_bfloat16_without_padding(lm):
    # one input, so no padding and no additive mask: the attention weights stay bfloat16, and the
    # float32 copies handed back must not replace the tensors the gradient is taken with respect to
    lb = set_precision(lm, "bfloat16")
    try:
        grads, _ = gradient_importance(lb, encode_inputs(lm.tokenizer, SENTENCES[:1], 64), seed=0, progress=False)
        assert np.isfinite(grads["value"].to_numpy()).all() and (grads["value"] > 0).any()
    finally:
        set_precision(lm, "float32")


def test_feature_cache_keys_precision_apart(lm, tmp_path):
    encs = encode_inputs(lm.tokenizer, [["a", "b", "."]], 64)
    lb = set_precision(random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=3), "bfloat16")
    lf = set_precision(random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=3), "float32")
    assert lf.info.revision == lb.info.revision
    k32 = extract._cache_key(lf, encs, "word")
    kbf = extract._cache_key(lb, encs, "word")
    assert k32 != kbf


def test_start_records_precision_as_a_deviation(tmp_path, monkeypatch):
    from bertology import models

    monkeypatch.setattr(models, "autocast_speedup", lambda precision, device="cpu": 2.5)  # a CPU with bfloat16
    lm = random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=0)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    run = start("test", model=str(tmp_path / "m"), output_dir=tmp_path / "out", precision="bfloat16", n=2)
    assert run.loaded.info.precision == "bfloat16"
    assert run.meta["precision"] == "bfloat16"
    assert any(d.startswith("Precision: every forward pass runs under torch.autocast in bfloat16")
               for d in run.meta["deviations"])
    assert "bfloat16 matrix products ran 2.5x as fast as float32 on this CPU" in " ".join(run.meta["notes"])
    json.dumps(run.meta, default=str)
    plain = start("test", model=str(tmp_path / "m"), output_dir=tmp_path / "out2", n=2)
    assert plain.loaded.info.precision == "float32" and not any("Precision" in d for d in plain.meta["deviations"])
    with pytest.raises(ParameterError, match="'precision' must be one of"):
        start("test", model=str(tmp_path / "m"), output_dir=tmp_path / "out3", precision="half", n=2)
    with pytest.raises(ParameterError, match="needs a CUDA device"):
        start("test", model=str(tmp_path / "m"), device="cpu", output_dir=tmp_path / "out4", precision="float16", n=2)


def test_autocast_speedup_is_one_for_float32_and_measured_otherwise():
    from bertology.models import autocast_speedup

    assert autocast_speedup("float32") == 1.0  # by definition, nothing timed
    s = autocast_speedup("bfloat16", "cpu")
    assert s > 0 and math.isfinite(s)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast_speedup("float16", "cpu")


def test_a_precision_slower_than_float32_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    """On a CPU without bfloat16 arithmetic autocast makes every product several times slower: the
    run stops at once with the measured factor instead of running for hours."""
    from bertology import cli, models

    lm = random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=0)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(models, "autocast_speedup", lambda precision, device="cpu": 0.2)
    with pytest.raises(ValueError, match="about 5x slower than float32"):
        models.check_precision_speed("bfloat16", "cpu")
    with pytest.raises(ParameterError, match="parameter 'precision': .*5x slower .*use precision 'float32'"):
        start("test", model=str(tmp_path / "m"), output_dir=tmp_path / "out", precision="bfloat16", n=2)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--precision", "bfloat16",
                  "--notebooks", "01"])
    assert exc.value.code == 2 and "5x slower than float32" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(models, "autocast_speedup", lambda precision, device="cpu": 0.6)  # slower, not refused
    assert models.check_precision_speed("bfloat16", "cpu") == 0.6
