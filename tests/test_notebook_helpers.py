"""notebook.py helpers every notebook uses: parameter checks, the one scorer choice, labels."""
import json
import logging
from pathlib import Path

import pytest

from bertology import attention, labels
from bertology.models import MissingHeadError, random_bert
from bertology.notebook import ParameterError, Run, check_choice, check_params

ROOT = Path(__file__).resolve().parents[1]


def make_run(loaded, tmp_path, seed=0):
    return Run("test", loaded, tmp_path, seed, True, "cpu", {"notes": [], "deviations": []})


def test_optional_sizes_may_be_none_others_may_not():
    check_params("m", 0, False, "auto", ".", optional=("max_pairs",), max_pairs=None, n=3)
    check_params("m", 0, False, "auto", ".", optional=("max_pairs",), max_pairs=5, n=3)
    with pytest.raises(ParameterError, match=r"'n' must be a positive integer, got None"):
        check_params("m", 0, False, "auto", ".", n=None)
    with pytest.raises(ParameterError, match=r"'max_pairs' must be a positive integer or None \(no limit\), got 0"):
        check_params("m", 0, False, "auto", ".", optional=("max_pairs",), max_pairs=0)
    with pytest.raises(ValueError, match="not passed"):
        check_params("m", 0, False, "auto", ".", optional=("typo",), n=3)


def test_check_choice_names_parameter_and_choices():
    assert check_choice("pool", "last", ("last", "first")) == "last"
    with pytest.raises(ParameterError, match=r"parameter 'pool' must be one of 'last', 'first', got 'max'"):
        check_choice("pool", "max", ("last", "first"))
    with pytest.raises(ParameterError):
        check_choice("flag", True, (1, 2))  # True == 1, but a bool is not a choice


def param_cells():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        yield pytest.param(nb, id=nb.stem[:2])


@pytest.mark.parametrize("nb", param_cells())
def test_papermill_parses_every_parameter(nb, caplog):
    """papermill warns "Unable to parse line" on a parameter line with two '=' (e.g. in its comment)."""
    from papermill.translators import PythonTranslator

    doc = json.loads(nb.read_text())
    src = "".join(next(c for c in doc["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    with caplog.at_level(logging.WARNING, logger="papermill"):
        params = PythonTranslator.inspect({"source": src})
    assert "Unable to parse" not in caplog.text
    assigned = [line.split("=")[0].strip() for line in src.splitlines() if line.strip() and not line.startswith("#")]
    assert [p.name for p in params] == assigned
    assert all(p.default != "None" or p.inferred_type_name == "None" for p in params)


def test_labels_are_one_formatter_and_minus_one_is_last():
    assert labels.head_label(2, 1) == "3-2" and attention.head_label is labels.head_label
    assert [labels.hidden_layer(x, 6) for x in (None, -1, 0, 6, -7, 3)] == [6, 6, 0, 6, 0, 3]
    for bad in (7, -8, 1.0, True, "last"):
        with pytest.raises(ValueError, match="-1 = last"):
            labels.hidden_layer(bad, 6)


def test_scorer_uses_the_mlm_head_when_there_is_one(tmp_path):
    lm = random_bert(n_layers=1, n_heads=2, hidden_size=8, mlm=True, seed=0, name="tiny-mlm")
    run = make_run(lm, tmp_path, seed=3)
    main, control = run.scorer(), run.scorer("control")
    assert (main.source, control.source) == ("mlm", "control")
    assert run.values["sources"] == {"mlm": "tiny-mlm MLM head", "control": "random-init control (seed 3)"}
    assert run.meta["notes"] == [] and run.meta["deviations"] == [] and run.source_lines() == []
    with pytest.raises(ParameterError, match="'source' must be one of"):
        run.scorer("head")


def test_scorer_without_mlm_head_and_nothing_to_load_in_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTOLOGY_CACHE", str(tmp_path / "cache"))
    lm = random_bert(n_layers=2, n_heads=2, hidden_size=8, mlm=False, seed=0, name="tiny-enc")
    run = make_run(lm, tmp_path)
    with pytest.raises(MissingHeadError):
        run.scorer("mlm")
    assert run.scorer("auto", -1, fit=False) is None
    assert run.meta["notes"] == ["No readout head for layer 2 of tiny-enc is shipped or cached, and this run does not "
                                 "fit one (quick mode); only the other sources were scored."]
    assert "sources" not in run.values and run.source_lines() == []
    with pytest.raises(ParameterError, match="readout layer"):
        run.scorer("readout", 3)


def test_scorer_readout_writes_the_standard_note_and_deviation(minilm, tmp_path):
    run = make_run(minilm, tmp_path)
    main = run.scorer("auto", -1, use="LAMA answers", paper="Petroni et al. (2019)")
    assert main.source == "readout" and main.layer == minilm.info.n_layers == 6
    assert run.values["sources"] == {"readout": main.label}
    assert run.meta["deviations"] == ["LAMA answers from a fitted readout (layer 6), not the model's own MLM head "
                                      "as in Petroni et al. (2019)."]
    assert run.meta["notes"][0].startswith("minilm has no masked-LM head") and main.label in run.meta["notes"][0]
    run.scorer("control")
    assert run.source_lines() == ["**The model's own MLM head could not be evaluated** (minilm has none): `readout` "
                                  "numbers say what a head fitted on layer 6 can decode, and `control` numbers what "
                                  "a random network gives."]


def test_treebank_records_its_source(minilm, tmp_path):
    run = make_run(minilm, tmp_path)
    assert run.data_source is None
    run.treebank("sample", "dev", limit=3)
    assert run.data_source == "sample" and run.meta["data"] == "bertology sample treebank (dev)"
