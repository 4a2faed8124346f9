"""Head importance and pruning (Michel et al. 2019) on tiny random float64 models: every expected
value follows from the definitions (finite differences, zeroed weights, hand-made scores)."""
import numpy as np
import pandas as pd
import pytest
import torch

from bertology import models, pruning as pr
from bertology.interventions import layer_stack
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


def _gate_finite_differences(tiny, task, eps: float) -> np.ndarray:
    """Central differences of the loss in each head's mask gate, (layers, heads), signed."""
    out = np.zeros((2, 4))
    for l in range(2):
        for h in range(4):
            loss = []
            for s in (1, -1):
                m = torch.ones(2, 4, dtype=torch.float64)
                m[l, h] += s * eps
                set_head_mask(tiny.model, m)
                with torch.no_grad():
                    loss.append(task.loss_fn(tiny.model, task.batches[0]).item())
            out[l, h] = (loss[0] - loss[1]) / (2 * eps)
    set_head_mask(tiny.model, None)
    return out


def test_importance_equals_finite_differences(tiny):
    task = pr.build_task(tiny, "mlm", SENTS, batch_size=8, seed=1)
    assert len(task.batches) == 1  # then E|dL/dxi| is |dL/dxi| of that one batch
    imp = pr.head_importance(tiny, task, normalize=False, abs_at="batch")
    fd_signed = _gate_finite_differences(tiny, task, eps=1e-5)
    fd = np.abs(fd_signed)
    np.testing.assert_allclose(imp, fd, rtol=1e-6, atol=1e-9)
    norm = pr.head_importance(tiny, task, abs_at="batch")  # Michel §4.2: each layer has unit L2 norm
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0)
    np.testing.assert_allclose(norm, imp / np.linalg.norm(imp, axis=1, keepdims=True))
    # the per-token gate gradients add up to the head's one gate gradient (signed)
    g = pr.gate_gradients(tiny, task, task.batches[0])
    np.testing.assert_allclose(g.sum((1, 2)).numpy(), fd_signed, rtol=1e-6, atol=1e-9)


def test_token_gate_gradient_equals_finite_difference_at_that_position(tiny):
    """dL/dxi_{h,x,t}: scale head h's output at position t of example x only (a hook) and difference."""
    task = pr.build_task(tiny, "mlm", SENTS, batch_size=8, seed=1)
    b = task.batches[0]
    g = pr.gate_gradients(tiny, task, b)  # (L, B, T, H)
    mod = models.self_attention_modules(tiny.model)[0]
    eps = 1e-3  # the gradients are ~1e-8..1e-6 here; smaller steps drown in the rounding of a loss near 10
    for x, t, h in [(0, 2, 1), (1, 1, 3), (2, 0, 0)]:
        loss = []
        for s in (1, -1):
            def hook(_m, _a, out, s=s):
                o = out[0].clone()
                o[x, t, 4 * h:4 * (h + 1)] *= 1 + s * eps  # head h = columns 4h..4h+3 (d = 4)
                return (o,) + tuple(out[1:])
            hd = mod.register_forward_hook(hook)
            with torch.no_grad():
                loss.append(task.loss_fn(tiny.model, b).item())
            hd.remove()
        assert g[0, x, t, h].item() == pytest.approx((loss[0] - loss[1]) / (2 * eps), rel=1e-4, abs=1e-13)


def test_importance_aggregation_by_hand():
    """Authors' calculate_head_importance: sum of |per-token gate gradient|, layers but the last
    divided by the number of tokens, the last by the number of examples. Hand-made gradients with
    opposite signs, where the batch gradient (the old definition) cancels."""
    # L=2 layers, B=2 examples, T=2 positions, H=2 heads
    g = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    g[0, :, :, 0] = torch.tensor([[1.0, -1.0], [2.0, 0.0]])  # layer 0, head 0: tokens (x0: 1, -1), (x1: 2, pad)
    g[0, :, :, 1] = torch.tensor([[0.5, 0.5], [-1.0, 0.0]])
    g[1, :, :, 0] = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])  # last layer: only position 0 matters
    g[1, :, :, 1] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    attn = torch.tensor([[1, 1], [1, 0]])  # 3 real tokens, 2 examples
    tok = pr.aggregate_importance([(g, attn)], "token")
    # layer 0: (|1|+|-1|+|2|)/3 = 4/3, (0.5+0.5+1)/3 = 2/3; layer 1: (3+3)/2 = 3, (1+1)/2 = 1
    np.testing.assert_allclose(tok, [[4 / 3, 2 / 3], [3.0, 1.0]])
    ex = pr.aggregate_importance([(g, attn)], "example")
    # per example sums: l0h0: 0, 2 -> 1; l0h1: 1, -1 -> 1; l1h0: 3, -3 -> 3; l1h1: 1, 1 -> 1
    np.testing.assert_allclose(ex, [[1.0, 1.0], [3.0, 1.0]])
    bat = pr.aggregate_importance([(g, attn)], "batch")
    # batch sums: 2, 0, 0, 2 (one batch)
    np.testing.assert_allclose(bat, [[2.0, 0.0], [0.0, 2.0]])
    # two batches: sums then one division over all tokens / examples
    two = pr.aggregate_importance([(g, attn), (g[:, :1], attn[:1])], "token")
    np.testing.assert_allclose(two, [[(4 + 2) / 5, (2 + 1) / 5], [(6 + 3) / 3, (2 + 1) / 3]])
    # per-layer L2 normalisation (exponent 2): layer 0 (4/3, 2/3) -> (2, 1)/sqrt 5
    np.testing.assert_allclose(pr.normalize_by_layer(tok)[0], np.array([2, 1]) / np.sqrt(5))
    with pytest.raises(ValueError):
        pr.aggregate_importance([(g, attn)], "sentence")


def test_importance_is_scored_on_the_importance_sentences(tiny):
    train = [["a", "dog", "ran", "."], ["cats", "sleep"]]
    task = pr.build_task(tiny, "embedding", SENTS, importance_sentences=train, seed=2)
    assert sum(len(b["input_ids"]) for b in task.importance_batches) == 2
    assert sum(len(b["input_ids"]) for b in task.batches) == 3
    on_train = pr.head_importance(tiny, task, normalize=False)
    np.testing.assert_allclose(on_train, pr.head_importance(tiny, task, normalize=False, batches=task.importance_batches))
    assert not np.allclose(on_train, pr.head_importance(tiny, task, normalize=False, batches=task.batches))
    assert pr.evaluate(tiny, task) == pytest.approx(1.0)  # the metric stays on the evaluation sentences


def test_recomputed_order_scores_the_pruned_model(tiny):
    task = pr.build_task(tiny, "mlm", SENTS, batch_size=8, seed=1)
    once = pr.removal_order(pr.head_importance(tiny, task))
    steps = [0, 2, 4, 8]
    order = pr.recomputed_order(tiny, task, steps)
    assert sorted(order) == sorted(once) and order[:2] == once[:2]  # the first step scores the unpruned model
    # the next two are the lowest of the scores recomputed with the first two heads removed
    again = pr.head_importance(tiny, task, mask=pr.mask_without(order[:2], (2, 4)))
    assert all(again[l, h] == 0 for l, h in order[:2])  # a removed head has no gradient
    assert order[2:4] == [h for h in pr.removal_order(again) if h not in order[:2]][:2]


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
    # authors' int(n * p / 100), rounded down: 72 x 30% = 21.6 -> 21 (rounding gave 22)
    assert pr.curve_steps(72, 0.1) == [0, 7, 14, 21, 28, 36, 43, 50, 57, 64, 72]
    # their script's 5% steps for BERT-base: 144 x 5% = 7.2 -> 7, 144 x 35% = 50.4 -> 50
    s144 = pr.curve_steps(144)
    assert len(s144) == 21 and s144[:3] == [0, 7, 14] and s144[7] == 50 and s144[-1] == 144
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


def test_curves_evaluate_each_mask_once_and_match_fresh_evaluations(tiny, monkeypatch):
    T = pr.build_task(tiny, "mlm", SENTS)
    order = pr.removal_order(np.arange(8.0).reshape(2, 4))  # layer 0 first: nothing to replay
    late = [(1, h) for h in range(4)] + [(0, h) for h in range(4)]  # layer 1 first: layer 0 replayed
    steps = [0, 2, 4, 8]
    fresh = [pr.evaluate(tiny, T, pr.mask_without(o[:n], (2, 4))) for o in (order, late) for n in steps]
    calls = []
    real = pr.evaluate
    monkeypatch.setattr(pr, "evaluate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    table = pr.curves(tiny, T, {"a": order, "b": late}, steps, n_random=0)
    np.testing.assert_allclose(table.metric, fresh, rtol=0, atol=1e-12)
    assert len(calls) == 6  # 8 points, the unpruned and the empty model once each


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


def test_evaluation_resumed_above_the_removed_heads_gives_the_same_metric(tiny):
    """Layers below the lowest removed head are replayed from the full model's outputs, not run:
    the metric is exactly the one of the full forward pass, and layer 0 really is not called."""
    task = pr.build_task(tiny, "embedding", SENTS, batch_size=2, seed=1)  # a continuous metric: equal means exact
    prefix = pr.layer_outputs(tiny, task)
    assert len(prefix) == len(task.batches) == 2 and all(len(p) == 2 for p in prefix)
    calls = []
    hook = tiny.model.bert.encoder.layer[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        for mask in ([[1, 1, 1, 1], [1, 0, 1, 1]], [[1, 1, 1, 1], [0, 0, 0.5, 1]]):
            mask = np.array(mask, dtype=float)
            calls.clear()
            resumed = pr.evaluate(tiny, task, mask, prefix)
            assert calls == []  # layer 0 was replayed
            assert resumed == pr.evaluate(tiny, task, mask) and resumed < 1 - 1e-9
            assert len(calls) == 2  # the plain evaluation ran it on both batches
        lower = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], dtype=float)  # a head of layer 0: nothing to replay
        calls.clear()
        assert pr.evaluate(tiny, task, lower, prefix) == pr.evaluate(tiny, task, lower) and len(calls) == 4
    finally:
        hook.remove()
    assert [type(m).__name__ for m in tiny.model.bert.encoder.layer] == ["BertLayer", "BertLayer"]  # stack restored

def test_skipped_layers_replay_the_layers_below_them(tokenizer):
    """Whole layers left out (``skip``): the layers below the lowest skipped one (or removed head)
    are replayed, and the metric equals the plain evaluation without them."""
    lm = random_bert(tokenizer, n_layers=4, n_heads=2, hidden_size=8, mlm=False, seed=5)
    lm.model.double()
    task = pr.build_task(lm, "embedding", SENTS, batch_size=2, seed=1)
    prefix = pr.layer_outputs(lm, task)
    calls = []
    hooks = [m.register_forward_hook(lambda *a, d=d: calls.append(d)) for d, m in enumerate(layer_stack(lm.model).layer)]
    head0 = np.array([[0, 1], [1, 1], [1, 1], [1, 1]], dtype=float)  # a head of layer 0: nothing to replay
    try:
        for skip, mask, ran in (([2], None, {3}), ([3, 1], None, {2}), ([3], None, {2}), ([2], head0, {0, 1, 3})):
            plain = pr.evaluate(lm, task, mask, skip=skip)
            calls.clear()
            assert pr.evaluate(lm, task, mask, prefix, skip=skip) == plain < 1 - 1e-9
            assert set(calls) == ran, (skip, calls)
        with pr.skip_layers(lm.model, [2]):
            outside = pr.evaluate(lm, task)
        assert pr.evaluate(lm, task, skip=[2]) == outside
    finally:
        for h in hooks:
            h.remove()
    assert len(layer_stack(lm.model).layer) == 4


# ----------------------------------------------------------------------------- notebook 08 sections


def _run(tmp_path, loaded):
    """A notebook run (bertology.notebook.Run) around ``loaded``, without start()."""
    from bertology.notebook import Run

    return Run("08_pruning", loaded, tmp_path, 0, True, "cpu", {"notes": [], "deviations": []})


@pytest.mark.slow  # a tiny model: a few dozen forward passes
def test_notebook_sections_are_their_parts(tiny, tmp_path):
    run = _run(tmp_path, tiny)
    setup = pr.pruning_setup(run, "embedding", "sample", n_sentences=6, n_importance=4, step=0.25, batch_size=4)
    assert len(setup.sentences) == 6 and len(setup.importance_sentences) == 4
    assert run.meta["sizes"]["n_sentences"] == 6 and run.meta["sizes"]["n_importance"] == 4
    assert run.meta["data"].endswith("; importance on bertology sample treebank (train)")
    assert run.values["unpruned_metric"] == setup.base == pr.evaluate(tiny, setup.task)
    assert run.meta["methods"]["michel"]["n_importance"] == 4 and run.meta["methods"]["michel"]["step"] == 0.25
    dev = pr.pruning_setup(_run(tmp_path, tiny), "embedding", "sample", 6, importance_split="dev", batch_size=4)
    assert dev.importance_sentences is None and dev.task.importance_batches is None
    T, base = setup.task, setup.base
    imp = pr.importance_study(run, T, base)
    by_hand = pr.importance_vs_ablation(tiny, T, base)
    np.testing.assert_allclose(imp["raw"], by_hand["raw"])
    np.testing.assert_allclose(imp["drops"], by_hand["drops"])
    assert run.values["importance_vs_ablation"] is imp["summary"]
    assert run.values["key_numbers"]["Spearman(importance, ablation)"] == pytest.approx(imp["summary"]["spearman_raw"], abs=1e-4)
    cs = pr.curve_study(run, T, imp, base, step=0.25, n_random=1)
    assert cs.steps == [0, 2, 4, 6, 8] and cs.orders == pr.orders(imp, raw=False)
    pd.testing.assert_frame_equal(cs.curves, pr.curves(tiny, T, pr.orders(imp, raw=False), cs.steps, n_random=1, seed=0))
    assert run.meta["notes"][-1].startswith("Pruning curves: 1 random removal order (n_random) as a baseline of ours")
    assert set(pr.curve_study(run, T, imp, base, step=0.5, n_random=0, raw_order=True).curves.order) == set(pr.orders(imp))
    pd.testing.assert_frame_equal(cs.removable, pr.removable_table(cs.curves, base))
    n90 = int(cs.by_importance.removable_90)
    assert cs.removed_90 == pr.orders(imp)["gradient importance"][:max(n90, 2)]
    share = run.values["key_numbers"]["heads removable at 95% (importance order, share)"]
    assert share == round(cs.by_importance.removable_95 / 8, 4)
    lvh = pr.layers_study(run, T, imp["normalised"])
    pd.testing.assert_frame_equal(lvh, pr.layers_vs_heads(tiny, T, imp["normalised"]))
    speed = pr.speed_study(run, T, cs.removed_90, repeats=1)
    assert run.values["physical_pruning"] is speed and abs(speed["metric_pruned"] - speed["metric_masked"]) < 1e-3
    assert "forward speed-up, pruned copy" in run.values["key_numbers"]


def test_layers_and_speed_studies_skip_an_unsupported_model(tmp_path, monkeypatch):
    monkeypatch.setattr(pr, "unsupported", lambda loaded: "one layer shared by every depth")
    run = _run(tmp_path, None)
    assert pr.layers_study(run, None, None) is None and pr.speed_study(run, None, []) is None
    assert run.meta["notes"] == ["Whole-layer removal and physical pruning were not run: one layer shared by every depth."]
    assert "physical_pruning" not in run.values


def test_check_parameters_names_the_parameter():
    from bertology.notebook import ParameterError

    pr.check_parameters("upos", "dev", "batch", 0.5)  # fine
    for kw, name in ((dict(task="nli"), "'task'"), (dict(importance_split="test"), "'importance_split'"),
                     (dict(abs_at="layer"), "'abs_at'"), (dict(step=0.0), "'step' must be in")):
        with pytest.raises(ParameterError, match=name):
            pr.check_parameters(**kw)


@pytest.mark.parametrize("name", ["mlm", "embedding"])
def test_task_draws_do_not_depend_on_batching(tiny, name):
    """The masked pieces (mlm) and the projections (embedding) are drawn per sentence, so the
    batch size changes neither the targets nor the metric, with or without a head removed."""
    sents = SENTS + [[f"w{i}" for i in range(n)] for n in (12, 17, 9, 20)]  # long enough for 15% to pick pieces
    one, many = (pr.build_task(tiny, name, sents, batch_size=bs, seed=4) for bs in (1, 8))
    assert len(one.batches) == len(sents) and len(many.batches) < len(sents)

    def rows(task):  # each input's targets (position, id) or projection, in a batch-free order
        if name == "mlm":
            return sorted(tuple((int(t), int(r[t])) for t in torch.nonzero(r != -100).flatten())
                          for b in task.batches for r in b["labels"])
        return sorted(tuple(np.round(r.numpy(), 12)) for b in task.batches for r in b["u"])

    assert rows(one) == rows(many)
    m = np.ones((2, 4))
    m[1, 2] = 0
    for mask in (None, m):
        assert np.isclose(pr.evaluate(tiny, one, mask), pr.evaluate(tiny, many, mask), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["mlm", "embedding"])
def test_importance_does_not_depend_on_batching(tiny, name):
    """The loss is a sum over the batch / batch_size, so an input's |dL/dξ| does not depend on
    which inputs share its batch (a mean over each batch would weigh it by 1 / the batch's size)."""
    sents = SENTS + [[f"w{i}" for i in range(n)] for n in (12, 17, 9, 20)]
    tasks = [pr.build_task(tiny, name, sents, batch_size=8, seed=4) for _ in range(2)]
    tasks[1].batches = pr.build_task(tiny, name, sents, batch_size=1, seed=4).batches  # same loss, other batches
    assert len(tasks[1].batches) == len(sents) > len(tasks[0].batches)
    for abs_at in ("token", "example"):
        eight, single = (pr.head_importance(tiny, t, normalize=False, abs_at=abs_at) for t in tasks)
        assert np.allclose(eight, single, rtol=1e-9, atol=0) and (eight > 0).all()
