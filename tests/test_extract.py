import numpy as np
import pytest
import torch

from bertology import extract as ex
from bertology.attention import KeepExamples
from bertology.models import UnsupportedModelError

SENTS = [["The", "unaffordable", "house", "stood", "empty", "."], ["Dogs", "bark", "."],
         (["It", "rained", "."], ["We", "stayed", "inside", "."]), ["A"] + ["very"] * 12 + ["long", "one", "."]]


class Collect:
    def __init__(self):
        self.items = {}

    def update(self, item):
        self.items[item.index] = item

    def result(self):
        return self.items


def test_token_level_extraction_equals_direct_model_call(minilm):
    col = Collect()
    ex.extract(minilm, SENTS, col, level="token", hidden_states=True, batch_size=3, progress=False)
    for i, x in enumerate(SENTS):
        a, b = (x if isinstance(x, tuple) else (x, None))
        enc = minilm.tokenizer(a, b, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            out = minilm.model(**enc, output_attentions=True, output_hidden_states=True)
        direct = torch.stack(out.attentions, 1)[0].numpy()
        assert np.allclose(col.items[i].attention, direct, atol=2e-5)
        assert np.allclose(col.items[i].hidden, torch.stack(out.hidden_states, 1)[0].numpy(), atol=2e-4)


def test_word_level_extraction_matches_token_level_by_hand(minilm):
    tok, word = Collect(), Collect()
    ex.extract(minilm, SENTS[:1], tok, level="token", progress=False)
    ex.extract(minilm, SENTS[:1], word, level="word", progress=False)
    a, w = tok.items[0].attention, word.items[0].attention
    # "unaffordable" is pieces 2..5 (una ##ff ##ord ##able) and unit 2
    assert w.shape[-1] == 8 and a.shape[-1] == 11
    assert np.allclose(w[3, 7, 1, 2], a[3, 7, 1, 2:6].sum(), atol=1e-5)
    assert np.allclose(w[3, 7, 2, 3], a[3, 7, 2:6, 6].mean(), atol=1e-5)
    assert np.allclose(w.sum(-1), 1.0, atol=1e-5)


def test_buckets_respect_batch_size_and_token_budget(tokenizer):
    encs = ex.encode_inputs(tokenizer, [["w"] * n for n in (3, 30, 4, 29, 5, 2)], 512)
    batches = ex.length_buckets(encs, batch_size=2, max_tokens=10_000)
    assert batches == [[5, 0], [2, 4], [3, 1]]
    tight = ex.length_buckets(encs, batch_size=8, max_tokens=40)  # lengths 4,5,6,7 then 31,32
    assert tight == [[5, 0, 2, 4], [3], [1]]


def test_cache_replays_identical_arrays_and_recomputes_corruption(minilm, tmp_path):
    first, second, third = Collect(), Collect(), Collect()
    s1 = ex.extract(minilm, SENTS, first, hidden_states=True, cache_dir=tmp_path, progress=False)
    s2 = ex.extract(minilm, SENTS, second, hidden_states=True, cache_dir=tmp_path, progress=False)
    assert not s1.from_cache and s2.from_cache and s1.cache_path == s2.cache_path
    for i in range(len(SENTS)):
        assert np.array_equal(first.items[i].attention, second.items[i].attention)
        assert np.array_equal(first.items[i].hidden, second.items[i].hidden)
    shard = sorted((tmp_path / s1.cache_path.split("/")[-1]).glob("shard-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    s3 = ex.extract(minilm, SENTS, third, hidden_states=True, cache_dir=tmp_path, progress=False)
    assert not s3.from_cache
    assert all(np.array_equal(first.items[i].attention, third.items[i].attention) for i in range(len(SENTS)))
    # a different option is a different entry
    s4 = ex.extract(minilm, SENTS, Collect(), level="token", cache_dir=tmp_path, progress=False)
    assert s4.cache_path != s1.cache_path


def test_unfinished_cache_entry_is_ignored(minilm, tmp_path):
    s = ex.extract(minilm, SENTS[:2], Collect(), cache_dir=tmp_path, progress=False)
    (tmp_path / s.cache_path.split("/")[-1] / "index.json").unlink()
    again = ex.extract(minilm, SENTS[:2], Collect(), cache_dir=tmp_path, progress=False)
    assert not again.from_cache


def test_keep_examples_and_truncation_count(minilm):
    keep = KeepExamples([1])
    long = ["unaffordable"] * 200  # 800 pieces > 512
    stats = None
    with pytest.warns(UserWarning, match="truncated"):
        stats = ex.extract(minilm, [SENTS[0], long], keep, progress=False)
    assert stats.n_truncated == 1 and list(keep.items) == [1]
    assert keep.items[1].encoding.n_words_kept == 127  # (512 - 2) // 4


def test_bad_requests(minilm):
    with pytest.raises(ValueError, match="level"):
        ex.extract(minilm, SENTS, Collect(), level="sentence")
    with pytest.raises(ValueError, match="nothing to extract"):
        ex.extract(minilm, SENTS, Collect(), attention=False)
    with pytest.raises(ValueError, match="input 1: cannot encode an empty sentence"):
        ex.extract(minilm, [["ok"], []], Collect())


def test_pad_ids_right_pads_with_zero_and_masks_the_padding():
    from bertology.extract import pad_ids

    ids, mask = pad_ids([[101, 7, 102], [101, 102]])
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_padded_batches_are_the_engine_buckets_padded():
    seqs = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]
    got = list(ex.padded_batches(seqs, batch_size=2, max_tokens=100))
    assert [b for b, _, _ in got] == [[1, 2], [0, 3]]  # sorted by length, cut at two
    ids, mask = got[1][1], got[1][2]
    assert ids.tolist() == [[1, 2, 3, 0], [7, 8, 9, 10]] and mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="batch_size"):
        list(ex.padded_batches(seqs, batch_size=0))


def test_states_select_layers_units_and_pooling_by_hand(tokenizer, tmp_path):
    """states() equals the model's hidden states, picked and pooled by hand."""
    from bertology.models import random_bert

    lm = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, mlm=False, seed=2)
    words = ["the", "glorped", "cat"]  # g ##lor ##ped
    enc = tokenizer(" ".join(words), return_tensors="pt")
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    with torch.inference_mode():
        hs = torch.stack(lm.model(**enc, output_hidden_states=True).hidden_states)[:, 0].numpy()  # (3, T, 16)
    spans, t = [], 1  # the piece positions of each word (after [CLS])
    for w in words:
        n = len(tokenizer.tokenize(w))
        spans.append(list(range(t, t + n)))
        t += n
    assert len(spans[1]) > 1, pieces  # the test needs a multi-piece word
    for pool, pick in (("mean", lambda s: hs[:, s].mean(1)), ("first", lambda s: hs[:, s[0]]),
                       ("last", lambda s: hs[:, s[-1]])):
        (got,) = ex.states(lm, [words], pool=pool, progress=False)
        assert got.shape == (3, 3, 16) and got.dtype == np.float32
        assert np.allclose(got, np.stack([pick(s) for s in spans], 1), atol=1e-5)
    (top,) = ex.states(lm, [words], layers=-1, pool="last", progress=False)
    assert top.shape == (1, 3, 16) and np.allclose(top[0], hs[2, [s[-1] for s in spans]], atol=1e-5)
    (pc,) = ex.states(lm, [words], layers=[0, 2], unit="piece", progress=False)
    assert pc.shape == (2, len(pieces) - 2, 16) and np.allclose(pc, hs[[0, 2], 1:-1], atol=1e-5)
    (sp,) = ex.states(lm, [words], layers=1, unit="piece", specials=True, progress=False)
    assert np.allclose(sp[0], hs[1], atol=1e-5)
    # the cache replays exactly; float16 storage rounds fresh and replayed arrays alike
    first = ex.states(lm, [words, ["a", "dog"]], cache=tmp_path, progress=False)
    assert len(list(tmp_path.glob("states-*/index.json"))) == 1
    again = ex.states(lm, [words, ["a", "dog"]], cache=tmp_path, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and again[1].shape == (3, 2, 16)
    for c in (None, tmp_path):  # concat: the same rows in one array, fresh and replayed
        flat = ex.states(lm, [words, ["a", "dog"]], concat=True, cache=c, progress=False)
        assert np.array_equal(flat, np.concatenate(first, axis=1)) and flat.shape == (3, 5, 16)
    h16 = ex.states(lm, [words], cache=tmp_path, cache_dtype="float16", progress=False)[0]
    assert np.array_equal(h16, first[0].astype(np.float16).astype(np.float32))
    assert np.array_equal(ex.states(lm, [words], cache=tmp_path, cache_dtype="float16", progress=False)[0], h16)
    for bad, match in (({"layers": 3}, "layer"), ({"pool": "max"}, "pool"), ({"unit": "char"}, "unit"),
                       ({"layers": []}, "empty")):
        with pytest.raises(ValueError, match=match):
            ex.states(lm, [words], progress=False, **bad)


ARCHS = ["bert", "roberta", "albert", "distilbert", "electra"]


def tiny_mlm_model(arch: str):
    """A tiny random masked-LM model of ``arch`` (vocabulary of 60) and a padded batch of 3 x 7."""
    from transformers import AutoModelForMaskedLM

    from bertology import zoo

    class Tok:  # all that model_config reads
        pad_token_id, bos_token_id, eos_token_id = 1, 0, 2

        def __len__(self):
            return 60

    config = zoo.model_config(arch, Tok(), "tiny", max_length=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, 60, (3, 7), generator=g), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    batch["attention_mask"][2, 5:] = 0
    return model, batch


class HeadCalls:
    """Counts the rows the vocabulary projection (``get_output_embeddings``) of a model maps."""

    def __init__(self, model):
        self.rows = 0
        model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, module, args, out):
        self.rows += args[0].reshape(-1, args[0].shape[-1]).shape[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_extraction_runs_the_encoder_without_the_head(arch):
    """Attention maps and hidden states come from the encoder alone (the head would map every
    position to vocabulary logits nobody reads): the head never runs, and the maps and states are
    the masked-LM model's own, bit for bit."""
    model, batch = tiny_mlm_model(arch)
    calls = HeadCalls(model)
    with torch.inference_mode():
        ref = model(**batch, output_attentions=True, output_hidden_states=True)
    assert calls.rows == 3 * 7
    out = ex.forward(model, batch, attention=True, hidden_states=True, base=True)
    assert calls.rows == 3 * 7  # the head did not run again
    for a, b in zip(out.attentions, ref.attentions):
        assert torch.equal(a, b)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert torch.equal(a, b)


def test_extract_and_states_never_run_the_head(tokenizer):
    """extract() and states() on a model with a masked-LM head (the one path every study's maps
    and states take) leave the head out, and equal the full model's outputs."""
    from bertology.models import random_bert

    lm = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, mlm=True, seed=4)
    calls = HeadCalls(lm.model)
    col = Collect()
    ex.extract(lm, SENTS, col, level="token", hidden_states=True, batch_size=2, progress=False)
    (st,) = ex.states(lm, [SENTS[0]], layers=-1, unit="piece", specials=True, progress=False)
    assert calls.rows == 0
    enc = tokenizer(SENTS[0], is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        out = lm.model(**enc, output_attentions=True, output_hidden_states=True)
    assert np.allclose(col.items[0].attention, torch.stack(out.attentions, 1)[0].numpy(), atol=1e-6)
    assert np.allclose(st[0], out.hidden_states[-1][0].numpy(), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_at_are_the_full_logits_at_those_positions(arch):
    """The head on chosen positions only gives the rows of the full logits (BERT, RoBERTa, ALBERT:
    one-module heads; DistilBERT, ELECTRA: heads split over several modules, called in order) and
    maps those positions only; gradients flow with grad=True."""
    model, batch = tiny_mlm_model(arch)
    calls = HeadCalls(model)
    rows, cols = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 6, 3, 4])
    assert ex.mlm_head(model) is not None
    full = ex.forward(model, batch).logits[rows, cols]
    calls.rows = 0
    torch.testing.assert_close(ex.logits_at(model, batch, rows, cols), full, rtol=1e-5, atol=1e-5)
    assert calls.rows == 4
    loss = ex.logits_at(model, batch, rows, cols, grad=True).logsumexp(-1).sum()
    loss.backward()
    assert next(model.parameters()).grad is not None


def test_buckets_take_the_cheapest_cut():
    """Padded tokens plus ``overhead`` per batch, minimised over cuts of the sorted lengths."""
    lengths = [10, 10, 10, 40]
    # one batch: 4 x 40 = 160 (+48) = 208; [10,10,10] + [40]: 30 + 40 (+96) = 166
    assert ex.buckets_by_length(lengths, batch_size=8, max_tokens=10_000) == [[0, 1, 2], [3]]
    # with a batch costing 100 tokens, one batch (260) beats two (270)
    assert ex.buckets_by_length(lengths, 8, 10_000, overhead=100) == [[0, 1, 2, 3]]
    # no overhead: every distinct length alone, ties by index
    assert ex.buckets_by_length([5, 3, 5, 3], 8, 10_000, overhead=0) == [[1, 3], [0, 2]]
    assert ex.buckets_by_length([], 8, 100) == []
    assert ex.buckets_by_length([500, 2], 8, 100) == [[1], [0]]  # longer than the budget: alone
    with pytest.raises(ValueError, match="overhead"):
        ex.buckets_by_length([1], 8, 100, overhead=-1)


def test_batch_overhead_by_device():
    """On the CPU a batch costs 48 padded tokens; on a GPU batches stay filled unless padding is huge."""
    assert ex.batch_overhead("cpu") == ex.batch_overhead(torch.device("cpu")) == ex.BATCH_OVERHEAD == 48
    assert ex.batch_overhead("cuda") == ex.batch_overhead("cuda:1") == ex.GPU_BATCH_OVERHEAD
    lengths = list(range(5, 69, 2))  # 32 inputs of 5..67 tokens: 2,144 padded in one batch, 1,184 real
    assert len(ex.buckets_by_length(lengths, 32, 8192, ex.batch_overhead("cuda"))) == 1
    assert len(ex.buckets_by_length(lengths, 32, 8192, ex.batch_overhead("cpu"))) > 1


def test_buckets_match_a_search_over_every_cut():
    """On small random cases the cut's cost equals the least over all cuts of the sorted inputs."""
    from itertools import combinations

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        lengths = rng.integers(1, 40, n).tolist()
        bs, budget, overhead = int(rng.integers(1, 5)), int(rng.integers(40, 120)), int(rng.integers(0, 60))
        ls = sorted(lengths)

        def cost(groups):
            return sum(overhead + len(g) * max(g) for g in groups)

        def ok(g):
            return len(g) <= bs and (len(g) == 1 or len(g) * max(g) <= budget)

        best = float("inf")
        for k in range(n):
            for cuts in combinations(range(1, n), k):
                groups = [ls[a:b] for a, b in zip((0, *cuts), (*cuts, n))]
                if all(ok(g) for g in groups):
                    best = min(best, cost(groups))
        got = ex.buckets_by_length(lengths, bs, budget, overhead)
        assert sorted(i for b in got for i in b) == list(range(n))
        assert all(ok([lengths[i] for i in b]) for b in got)
        assert cost([[lengths[i] for i in b] for b in got]) == best


@pytest.mark.parametrize("arch", ARCHS)
def test_states_at_equal_the_full_pass_at_those_positions(arch):
    """states_at: every layer's states at chosen positions (several per sequence, one sequence
    padded, one with none) equal the full pass's; BERT, RoBERTa and ELECTRA compute their top
    layer's feed-forward at the chosen positions only (padded to the most per sequence), and no
    layer above the one asked for runs."""
    model, batch = tiny_mlm_model(arch)
    with torch.inference_mode():
        ref = ex.forward(model, batch, hidden_states=True, base=True).hidden_states
    rows, cols = torch.tensor([2, 0, 2, 0, 0]), torch.tensor([4, 6, 0, 1, 3])
    n = len(ref) - 1
    rows_only = arch in ("bert", "roberta", "electra")
    try:
        stack = list(ex.layer_stack(model).layer)
    except UnsupportedModelError:  # ALBERT
        stack = []
    assert bool(stack) == (arch != "albert")
    seen = []
    hooks = [m.register_forward_hook(lambda mod, a, o, d=d: seen.append((d, a[0].shape[:2]))) for d, m in enumerate(stack)]
    for layer in (None, n, 1, 0):
        seen.clear()
        got = ex.states_at(model, batch, rows, cols, layer=layer)
        want = ref[n if layer is None else layer][rows, cols]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        top = n if layer is None else layer
        if stack:  # whole layers run below the top (the top too, where it cannot run at rows)
            assert [d for d, _ in seen] == list(range(top - 1 if rows_only and top else top))
        if rows_only and top:
            ffn = []
            h = stack[top - 1].intermediate.dense.register_forward_hook(lambda mod, a, o: ffn.append(a[0].shape[:2]))
            ex.states_at(model, batch, rows, cols, layer=layer)
            h.remove()
            assert ffn == [torch.Size([2, 3])]  # sequences 0 and 2, at most 3 positions each
    for h in hooks:
        h.remove()
    none = torch.zeros(0, dtype=torch.long)
    assert ex.states_at(model, batch, none, none).shape == (0, ref[0].shape[-1])
    with pytest.raises(ValueError, match="layer"):
        ex.states_at(model, batch, rows, cols, layer=n + 1)


def test_states_at_honour_head_masks_cut_and_replayed_stacks(tokenizer):
    """The top layer at chosen rows runs the model's own attention, so head masks apply; the top
    of a stack cut by skipped_layers or resumed by a replay is what states_at computes."""
    from bertology.interventions import masked_heads, recorded_layers, resumed_at
    from bertology.models import random_bert

    lm = random_bert(tokenizer, n_layers=3, n_heads=4, hidden_size=16, mlm=True, seed=5)
    batch = ex.collate(ex.encode_inputs(tokenizer, [["the", "cat", "sat", "."], ["dogs", "bark"]], 64), "cpu")
    rows, cols = torch.tensor([0, 1, 0]), torch.tensor([2, 1, 4])
    mask = torch.ones(3, 4)
    mask[2, [0, 3]] = 0
    mask[1, 1] = 0
    with masked_heads(lm.model, mask), torch.inference_mode():
        full = ex.forward(lm, batch, base=True).last_hidden_state[rows, cols]
        got = ex.states_at(lm, batch, rows, cols)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        plain = ex.forward(lm, batch, base=True).last_hidden_state[rows, cols]
    assert (plain - full).abs().max() > 1e-3  # the mask mattered
    with ex.skipped_layers(lm, [2]), torch.inference_mode():
        full = ex.forward(lm, batch, base=True).last_hidden_state[rows, cols]
        torch.testing.assert_close(ex.states_at(lm, batch, rows, cols), full, rtol=1e-5, atol=1e-6)
    with recorded_layers(lm) as calls, torch.inference_mode():
        ex.forward(lm, batch, base=True)
    with resumed_at(lm, 2, calls[0][1]), torch.inference_mode():
        torch.testing.assert_close(ex.states_at(lm, batch, rows, cols), plain, rtol=1e-5, atol=1e-6)
    assert len(ex.layer_stack(lm.model).layer) == 3


def test_states_at_under_sdpa_attention():
    """A model loaded with SDPA attention (not bertology's default, eager) computes its top layer at
    the chosen rows through SDPA too, with the same numbers."""
    model, batch = tiny_mlm_model("bert")
    model.set_attn_implementation("sdpa")
    rows, cols = torch.tensor([2, 0, 2, 0, 0]), torch.tensor([4, 6, 0, 1, 3])
    with torch.inference_mode():
        ref = ex.forward(model, batch, base=True).last_hidden_state[rows, cols]
    ffn = []
    ex.layer_stack(model).layer[-1].intermediate.dense.register_forward_hook(lambda m, a, o: ffn.append(a[0].shape[:2]))
    torch.testing.assert_close(ex.states_at(model, batch, rows, cols), ref, rtol=1e-5, atol=1e-6)
    assert ffn == [torch.Size([2, 3])]  # the top layer ran at the chosen rows
