"""Head importance and pruning (Michel et al. 2019) on tiny random float64 models: every expected
value follows from the definitions (finite differences, zeroed weights, hand-made scores)."""
import numpy as np
import pandas as pd
import pytest
import torch

from bertology import pruning as pr
from bertology.models import MissingHeadError, random_bert, set_head_mask

SENTS = [["the", "cat", "sat", "on", "the", "mat", "."], ["dogs", "bark", "."], ["a", "b", "c", "d"]]


@pytest.fixture(scope="module")
def tiny(tokenizer):
    lm = random_bert(tokenizer, n_layers=2, n_heads=4, hidden_size=16, mlm=True, seed=3)
    lm.model.double()
    return lm


def _states(lm, task, mask=None):
    set_head_mask(lm.model, None if mask is None else torch.as_tensor(mask, dtype=torch.float64))
    with torch.no_grad():
        out = [pr._last_states(lm.model, b) for b in task.batches]
    set_head_mask(lm.model, None)
    return out


def test_importance_equals_finite_differences(tiny):
    task = pr.build_task(tiny, "mlm", SENTS, batch_size=8, seed=1)
    assert len(task.batches) == 1  # then E|dL/dxi| is |dL/dxi| of that one batch
    imp = pr.head_importance(tiny, task, normalize=False)
    eps, fd = 1e-5, np.zeros((2, 4))
    for l in range(2):
        for h in range(4):
            loss = []
            for s in (1, -1):
                m = torch.ones(2, 4, dtype=torch.float64)
                m[l, h] += s * eps
                set_head_mask(tiny.model, m)
                with torch.no_grad():
                    loss.append(task.loss_fn(tiny.model, task.batches[0]).item())
            fd[l, h] = abs(loss[0] - loss[1]) / (2 * eps)
    set_head_mask(tiny.model, None)
    np.testing.assert_allclose(imp, fd, rtol=1e-6, atol=1e-9)
    norm = pr.head_importance(tiny, task)  # Michel §4.2: each layer has unit L2 norm
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0)
    np.testing.assert_allclose(norm, imp / np.linalg.norm(imp, axis=1, keepdims=True))


def test_masking_a_head_equals_zeroing_its_output(tiny):
    import copy

    task = pr.build_task(tiny, "embedding", SENTS)
    mask = np.ones((2, 4))
    mask[1, 2] = 0
    masked = _states(tiny, task, mask)
    zeroed = pr.LoadedModel(tiny.tokenizer, copy.deepcopy(tiny.model), tiny.info)
    v = zeroed.model.bert.encoder.layer[1].attention.self.value  # head 2 = value rows 8..11 (d = 4)
    with torch.no_grad():
        v.weight[8:12] = 0
        v.bias[8:12] = 0
    for a, b in zip(masked, _states(zeroed, task)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_useless_head_has_zero_importance_and_pruning_it_changes_nothing(tokenizer):
    lm = random_bert(tokenizer, n_layers=2, n_heads=4, hidden_size=16, mlm=True, seed=5)
    lm.model.double()
    with torch.no_grad():  # head 0-1 (layer 0, head 1) writes nothing: its output columns are 0
        lm.model.bert.encoder.layer[0].attention.output.dense.weight[:, 4:8] = 0
    for name in ("mlm", "embedding"):
        task = pr.build_task(lm, name, SENTS, seed=2)
        imp = pr.head_importance(lm, task, normalize=False)
        assert imp[0, 1] == 0.0
        assert (np.delete(imp.ravel(), 1) > 0).all()
    full = _states(lm, task)
    pruned = pr.pruned_copy(lm, [(0, 1)])
    for a, b in zip(full, _states(pruned, task)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    drops = pr.ablation_drops(lm, task)
    assert abs(drops[0, 1]) < 1e-12


def test_physical_pruning_equals_masking(tiny):
    task = pr.build_task(tiny, "mlm", SENTS, seed=0)
    removed = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]  # layer 1 loses every head
    pruned = pr.pruned_copy(tiny, removed)
    att = pruned.model.bert.encoder.layer[0].attention
    assert att.self.query.weight.shape == (8, 16) and att.output.dense.weight.shape == (16, 8)
    assert att.self.num_attention_heads == 2 and att.self.all_head_size == 8
    assert pr.param_count(tiny.model) - pr.param_count(pruned.model) == 6 * pr.head_params(tiny.model)
    masked = _states(tiny, task, pr.mask_without(removed, (2, 4)))
    for a, b in zip(masked, _states(pruned, task)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert pr.evaluate(pruned, task) == pr.evaluate(tiny, task, pr.mask_without(removed, (2, 4)))
    # pruning again uses original head numbers: removing head 2 of layer 0 twice is a no-op, head 3 is new
    pr.prune_heads(pruned.model, {0: [2, 3]})
    assert pruned.model.bert.encoder.layer[0].attention.self._bertology_kept == [1]


def test_curve_bookkeeping_on_hand_made_scores():
    scores = np.array([[0.5, 0.1, 0.9], [0.1, 0.7, 0.3]])
    order = pr.removal_order(scores)
    assert order == [(0, 1), (1, 0), (1, 2), (0, 0), (1, 1), (0, 2)]  # ties: earlier head first
    assert pr.curve_steps(6, 0.5) == [0, 3, 6]
    assert pr.curve_steps(72, 0.1) == [0, 7, 14, 22, 29, 36, 43, 50, 58, 65, 72]
    m = pr.mask_without(order[:3], (2, 3))
    np.testing.assert_array_equal(m, [[1, 0, 1], [0, 1, 0]])
    # metric per step: evaluate counts removed heads of a fake model where each head is worth its score
    curve = pr.pruning_curve(None, None, order, [0, 2, 4, 6], evaluate_fn=lambda mask: float((mask * scores).sum()))
    # 2.6 in all; minus 0.1 + 0.1; minus 0.1 + 0.1 + 0.3 + 0.5; nothing left
    assert curve.metric.round(6).tolist() == [2.6, 2.4, 1.6, 0.0]
    assert pr.removable(curve, 2.6, 0.90) == 2  # 2.4 >= 2.34, 1.6 < 2.34
    assert pr.removable(curve, 2.6, 0.95) == 0  # 2.4 < 2.47
    assert pr.removable(pd.DataFrame({"n_removed": [0, 5], "metric": [1.0, 2.0]}), 1.0, 0.9) == 5
    assert [len(o) for o in pr.random_orders((2, 3), 2, seed=0)] == [6, 6]


def test_task_choice_and_missing_head(tokenizer):
    lm = random_bert(tokenizer, n_layers=1, n_heads=2, hidden_size=8, mlm=False)
    assert pr.default_task(lm.info) == "embedding"
    with pytest.raises(MissingHeadError):
        pr.build_task(lm, "mlm", SENTS)
    with pytest.raises(ValueError):
        pr.build_task(lm, "sst2", SENTS)
    task = pr.build_task(lm, "embedding", SENTS)
    assert pr.evaluate(lm, task) == pytest.approx(1.0)  # the unpruned model is its own reference


def test_best_single_head_summary_picks_the_best_head_per_layer():
    single = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2],
                           "metric": [0.5, 0.9, 0.7, 0.2, 0.1, 0.3]})
    s = pr.best_single_head_summary(single, base=1.0)
    assert s["head"].tolist() == [1, 2] and s["label"].tolist() == ["1-2", "2-3"]
    assert np.allclose(s["delta"], [-0.1, -0.7]) and np.allclose(s["worst_single_head"], [0.5, 0.1])
