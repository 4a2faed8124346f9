"""Size presets: the full defaults are the notebooks' own, the laptop caps only ever lower them, and a
report names every size that is below its full default."""
import ast
import json
from pathlib import Path

import pytest

from bertology import sizes
from bertology.models import random_bert
from bertology.notebook import ParameterError, start

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _cells(nb: str):
    return json.loads((NOTEBOOKS / f"{nb}.ipynb").read_text(encoding="utf-8"))["cells"]


def _defaults(nb: str) -> dict:
    cell = next(c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_every_notebook_has_a_row_and_a_full_size_parameter():
    stems = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(sizes.LAPTOP) == stems
    for nb in stems:
        assert _defaults(nb)["size"] == "full", nb


@pytest.mark.parametrize("nb", sorted(sizes.LAPTOP))
def test_full_defaults_are_the_notebooks_and_laptop_caps_lower_them(nb):
    defaults = _defaults(nb)
    code = "".join("".join(c["source"]) for c in _cells(nb) if c["cell_type"] == "code")
    for name, (full, laptop) in sizes.LAPTOP[nb].items():
        assert (defaults[name] or None) == full, (nb, name)  # 0 in a parameters cell means all, as None
        assert isinstance(laptop, int) and laptop > 0 and (full is None or laptop < full), (nb, name)
        assert f"{name}={name}" in code.split("sizes.cap(", 1)[1].split(")", 1)[0], (nb, name)  # capped
    assert f'start("{nb}", size=size,' in code


def test_cap_lowers_to_the_laptop_caps_and_keeps_smaller_values():
    nb = "04_syntax_probes"
    assert sizes.cap(nb, "full", n_train=2000, n_test=7) == (2000, 7)
    assert sizes.cap(nb, "laptop", n_train=2000, n_test=7) == (500, 7)
    assert sizes.cap(nb, "laptop", n_blimp_control=None) == 3  # None is all items: capped; one name, one value
    assert sizes.cap(nb, "laptop", batch_size=32) == 32  # not a sampled size
    assert sizes.cap("02_attention_heads_syntax", "laptop", n_sentences=0) == 500  # 0 is the whole split
    with pytest.raises(ValueError, match="'size' must be one of 'full', 'laptop', got 'small'"):
        sizes.cap(nb, "small", n_train=1)
    with pytest.raises(KeyError, match="no sizes for notebook '01_attention_pattern'"):  # misspelt: not silently uncapped
        sizes.cap("01_attention_pattern", "laptop", n_pairs=1000)


def test_sampled_lists_what_is_below_the_full_default():
    assert sizes.sampled("04_syntax_probes", {"n_train": 500, "n_dev": 400, "n_blimp": 6, "batch_size": 8}) == [
        "n_train 500 (full: 2,000)", "n_blimp 6 (full: 30)"]
    assert sizes.sampled("02_attention_heads_syntax", {"n_sentences": 600, "probe_test_sentences": None}) == [
        "n_sentences 600 (full: all)"]
    assert sizes.sampled("04_syntax_probes", {"n_train": 2000}) == []
    assert sizes.sampled_note("04_syntax_probes", "full", {"n_train": 2000}) is None
    note = sizes.sampled_note("04_syntax_probes", "laptop", {"n_train": 500})
    assert note.startswith("Smaller samples than the full run (size 'laptop'") and "n_train 500 (full: 2,000)" in note


def test_start_puts_the_capped_sizes_in_the_deviations(tmp_path):
    lm = random_bert(n_layers=1, n_heads=2, hidden_size=16, seed=0)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    kw = dict(model=str(tmp_path / "m"), paper_model=str(tmp_path / "m"))
    run = start("04_syntax_probes", size="laptop", output_dir=tmp_path / "a", n_train=500, n_dev=100, **kw)
    assert run.meta["size"] == "laptop"
    assert [d for d in run.meta["deviations"] if d.startswith("Smaller samples")] == [
        sizes.sampled_note("04_syntax_probes", "laptop", {"n_train": 500, "n_dev": 100})]
    full = start("04_syntax_probes", output_dir=tmp_path / "b", n_train=2000, **kw)
    assert full.meta["size"] == "full" and not full.meta["deviations"]
    quick = start("04_syntax_probes", quick=True, output_dir=tmp_path / "c", n_train=150, **kw)
    assert not quick.meta["deviations"]  # quick mode is a smoke run, not a report to read
    with pytest.raises(ParameterError, match="'size' must be one of"):
        start("04_syntax_probes", size="tiny", output_dir=tmp_path / "d", n_train=1, **kw)


def test_relative_cost_and_cpu_advice_by_hand():
    assert sizes.relative_cost(6, 384) == 1.0
    assert sizes.relative_cost(12, 768) == 8.0  # 12 * 768^2 / (6 * 384^2) = 2 * 4
    assert sizes.relative_cost(6, 768) == 4.0  # DistilBERT: the threshold itself
    note = sizes.cpu_advice(12, 768, "cpu", "full", False, 2)
    assert note.startswith("note: this model (12 layers x 768) costs about 8x") and "--size laptop" in note
    assert sizes.cpu_advice(6, 768, "cpu", "full", False, 8) is not None
    assert sizes.cpu_advice(6, 384, "cpu", "full", False, 2) is None  # MiniLM
    assert sizes.cpu_advice(4, 768, "cpu", "full", False, 2) is None  # 2x
    assert sizes.cpu_advice(12, 768, "cpu", "laptop", False, 2) is None
    assert sizes.cpu_advice(12, 768, "cpu", "full", True, 2) is None
    assert sizes.cpu_advice(12, 768, "cuda", "full", False, 2) is None
    assert sizes.cpu_advice(12, 768, "cpu", "full", False, 9) is None
    with pytest.raises(ValueError, match="'size' must be one of"):
        sizes.cpu_advice(12, 768, "cpu", "huge", False, 2)
    assert sizes.may_advise("full", False, 8) and not sizes.may_advise("full", False, 9)
    assert not sizes.may_advise("laptop", False, 2) and not sizes.may_advise("full", True, 2)


@pytest.mark.parametrize("args, shown", [([], True), (["--size", "laptop"], False), (["--quick"], False),
                                         (["--no-index"], False), (["--model", "minilm"], False)])
def test_run_suggests_the_laptop_size_for_a_large_local_model_on_a_small_cpu(tmp_path, monkeypatch, capsys, args, shown):
    from bertology import cli, report
    from transformers import BertConfig

    BertConfig(num_hidden_layers=12, hidden_size=768).save_pretrained(tmp_path / "big")  # a config, no weights
    monkeypatch.setattr(report, "run", lambda notebooks, **kw: [])
    monkeypatch.setattr(report, "available_cores", lambda: 2)
    argv = ["run", "--model", str(tmp_path / "big"), "--device", "cpu", "--notebooks", "01", "--out", str(tmp_path), *args]
    if "--model" in args:  # MiniLM: no note
        argv = ["run", *args, "--device", "cpu", "--notebooks", "01", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert ("costs about 8x MiniLM's forward passes" in err) is shown


@pytest.mark.parametrize("args, message", [(["-p", "size=huge"], "-p size=huge: choose one of full, laptop"),
                                           (["--size", "laptop", "-p", "size=full"], "disagree: give one")])
def test_run_refuses_a_bad_or_contradicting_size_before_any_notebook(tmp_path, capsys, args, message):
    from bertology import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--notebooks", "01", "--out", str(tmp_path / "r"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
