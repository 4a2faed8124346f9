"""Model zoo: small random checkpoints of each common architecture, built here and saved with
``save_pretrained``, go through alignment, loading and every notebook in quick mode.

The weights are noise; these tests check that each architecture's tokenizer conventions
(``##`` / ``Ġ`` / ``▁`` piece markers, ``<s></s></s>`` pairs, missing token-type ids, no MLM
head) reach every study without a crash, never what the models know.
"""
import json

import numpy as np
from pathlib import Path

import pytest

from bertology import zoo
from bertology.align import encode_words
from bertology.models import load_model, reads_words_as_text

from conftest import run_quick

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name.split("_")[0] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# the piece marker of each architecture's tokenizer and where it sits
MARKERS = {"bert": ("##", "cont"), "bert-cased": ("##", "cont"), "distilbert": ("##", "cont"),
           "electra": ("##", "cont"), "roberta": ("Ġ", "start"), "albert": ("▁", "start")}


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """Every architecture (with its MLM head) plus an ELECTRA discriminator without one."""
    root = tmp_path_factory.mktemp("zoo")
    texts = zoo.texts_from_treebank("sample", "dev", limit=None)
    for arch in zoo.ARCHITECTURES:
        zoo.build_checkpoint(arch, root / arch, texts, vocab_size=800)
    zoo.build_checkpoint("electra", root / "electra-nohead", texts, vocab_size=800, mlm=False)
    return root


def _strip(piece: str, arch: str) -> str:
    marker, _ = MARKERS[arch]
    return piece.replace(marker, "")


@pytest.mark.parametrize("arch", zoo.ARCHITECTURES)
def test_pieces_join_back_to_their_words(zoo_dir, arch):
    lm = load_model(str(zoo_dir / arch))
    assert reads_words_as_text(lm.tokenizer)
    words = ["The", "Zebras", "quietly", "outran", "Barcelona", "."]
    enc = encode_words(lm.tokenizer, words)
    word_of_unit = enc.unit_word[enc.unit_of_token]  # word index of each piece, -1 for specials
    assert enc.unit_kind[0] == "cls" and enc.unit_kind[-1] == "sep"
    # every word's pieces, markers removed, spell the word (lower-cased by an uncased tokenizer)
    for w, word in enumerate(words):
        pieces = [p for p, pw in zip(enc.tokens, word_of_unit) if pw == w]
        joined = "".join(_strip(p, arch) for p in pieces)
        assert joined == (word.lower() if lm.info.uncased else word), (arch, word, pieces)
        if MARKERS[arch][1] == "cont":  # WordPiece: the marker on every piece but the first
            assert all(p.startswith("##") for p in pieces[1:]) and not pieces[0].startswith("##")
        else:  # byte-level BPE / SentencePiece: the marker on the first piece only
            assert pieces[0].startswith(MARKERS[arch][0]) or pieces[0] == MARKERS[arch][0]
    assert lm.info.uncased == (arch not in ("bert-cased", "roberta"))


def test_cased_tokenizer_keeps_case(zoo_dir):
    from bertology.cloze import word_pieces

    cased = load_model(str(zoo_dir / "bert-cased"))
    uncased = load_model(str(zoo_dir / "bert"))
    assert word_pieces(cased.tokenizer, "The") != word_pieces(cased.tokenizer, "the")
    assert word_pieces(uncased.tokenizer, "The") == word_pieces(uncased.tokenizer, "the")
    enc = encode_words(cased.tokenizer, ["The", "dog"])
    assert enc.unit_labels()[1] == "The"


def test_roberta_pairs_and_no_token_types(zoo_dir):
    lm = load_model(str(zoo_dir / "roberta"))
    enc = encode_words(lm.tokenizer, ["a", "dog"], ["it", "ran"])
    # RoBERTa separates the two segments with two </s>: both are separator units
    assert enc.tokens[0] == "<s>" and enc.tokens.count("</s>") == 3
    assert enc.unit_labels().count("[SEP]") == 3 and enc.unit_labels()[0] == "[CLS]"


def test_electra_without_head_is_reported_as_headless(zoo_dir):
    lm = load_model(str(zoo_dir / "electra-nohead"))
    assert not lm.info.has_mlm_head


# Every notebook on the three architectures whose code paths differ most (byte-level BPE without
# token types, one attention shared across depth, DistilBERT's own layout); on the others the
# notebooks where they differ (case in cloze vocabularies and agreement; no MLM head). CI time
# stays in budget this way; BERTOLOGY_ZOO=full runs every notebook on every architecture.
ZOO_RUNS = {"roberta": NOTEBOOKS, "albert": NOTEBOOKS, "distilbert": NOTEBOOKS,
            "bert-cased": ["04", "05", "07"], "electra": ["01", "08"], "electra-nohead": ["05", "07", "08"]}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ZOO_RUNS))
def test_notebooks_run_on_each_architecture(zoo_dir, tmp_path, arch):
    import os

    wanted = NOTEBOOKS if os.environ.get("BERTOLOGY_ZOO") == "full" else ZOO_RUNS[arch]
    code = run_quick(tmp_path, *wanted, extra=["--model", str(zoo_dir / arch)])
    assert code == 0
    runs = json.loads((tmp_path / "runs.json").read_text())
    ok = {v["latest"]["notebook"][:2] for v in runs.values() if v["latest"]["status"] == "ok"}
    assert ok == set(wanted), ok


@pytest.mark.parametrize("arch", ["distilbert", "albert", "roberta"])
def test_head_gates_work_on_each_architecture(zoo_dir, arch):
    """Michel's gate gradients on DistilBERT (no layer_idx, ``n_heads``) and ALBERT (one attention
    module shared by every layer): summed over tokens they equal central finite differences of the
    loss in each gate, so each layer's gates reach that layer only."""
    import torch

    from bertology import pruning as pr
    from bertology.interventions import masked_heads

    lm = load_model(str(zoo_dir / arch))
    lm.model.double()
    task = pr.build_task(lm, "mlm", [["the", "dog", "ran", "."], ["a", "cat", "sat", "on", "it"]], batch_size=8, seed=1)
    L, H = lm.info.n_layers, lm.info.n_heads
    g = pr.gate_gradients(lm, task, task.batches[0]).sum((1, 2)).numpy()
    eps, fd = 1e-5, np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            loss = []
            for s in (1, -1):
                m = torch.ones(L, H, dtype=torch.float64)
                m[layer, head] += s * eps
                with masked_heads(lm, m), torch.no_grad():
                    loss.append(task.loss_fn(lm.model, task.batches[0]).item())
            fd[layer, head] = (loss[0] - loss[1]) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)
    assert np.abs(fd).min() > 0  # every gate matters: no layer silently ignores its mask


@pytest.mark.parametrize("arch", ["distilbert", "roberta", "electra", "albert"])
def test_resumed_evaluation_matches_the_full_pass_on_each_architecture(zoo_dir, arch):
    """Leave-one-head-out with the layers below the head replayed gives the full pass's metric on
    every stack layout (DistilBERT's ``transformer.layer``, RoBERTa/ELECTRA ``encoder.layer``);
    ALBERT shares one layer group, has nothing to replay and falls back to full passes."""
    from bertology import pruning as pr

    lm = load_model(str(zoo_dir / arch))
    # the embedding task's metric (cosine to the unpruned embedding) is continuous: equal means exact
    task = pr.build_task(lm, "embedding", [["the", "dog", "ran", "."], ["a", "cat", "sat", "on", "it"]], batch_size=1,
                         seed=1)
    prefix = pr.layer_outputs(lm, task)
    assert (prefix is None) == (arch == "albert")
    mask = np.ones((lm.info.n_layers, lm.info.n_heads))
    mask[1, 0] = 0
    resumed = pr.evaluate(lm, task, mask, prefix)
    assert resumed == pr.evaluate(lm, task, mask) and resumed < 1 - 1e-6  # the removed head changed something


def test_byte_level_tokenizer_saved_without_prefix_space_is_reloaded_with_it(zoo_dir, tmp_path):
    """roberta-base ships add_prefix_space=False: pre-split words would lose their 'Ġ' marker."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(zoo_dir / "roberta", tmp_path / "rb")
    bare = AutoTokenizer.from_pretrained(tmp_path / "rb", add_prefix_space=False)
    bare.save_pretrained(tmp_path / "rb")
    assert not reads_words_as_text(AutoTokenizer.from_pretrained(tmp_path / "rb"))
    lm = load_model(str(tmp_path / "rb"))
    assert reads_words_as_text(lm.tokenizer)
    enc = encode_words(lm.tokenizer, ["the", "dog"])
    assert enc.tokens[2].startswith("Ġ")  # "dog" after a space, as in running text
