"""The notebook runner: papermill execution, report layout, failure isolation, index, CLI parsing.

Each run starts a Jupyter kernel (a few seconds), so the kernel-backed tests share runs where they can.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from bertology import cli, report

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


def _snapshot(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


@pytest.fixture(scope="module")
def nb_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("notebooks")
    for nb in FIXTURES.glob("*.ipynb"):
        shutil.copy(nb, d / nb.name)
    return d


@pytest.fixture(scope="module")
def ok_run(nb_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    rec = report.run_notebook(nb_dir / "01_ok.ipynb", "minilm", out=out, seed=7, params={"n_items": 3})
    return rec, out


# ---------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    "name, slug",
    [
        ("minilm", "minilm"),
        ("bert-base-uncased", "bert-base-uncased"),
        ("google-bert/bert-base-cased", "google-bert--bert-base-cased"),
        ("/some/local/dir", "dir"),
        ("/some/local/dir/", "dir"),
        ("./models/tiny", "tiny"),
        ("org/we ird:name", "org--we_ird_name"),
    ],
)
def test_model_slug(name, slug):
    assert report.model_slug(name) == slug


def test_discover_and_resolve(nb_dir):
    found = report.discover_notebooks(nb_dir)
    assert found["01"] == found["01_ok"] == nb_dir / "01_ok.ipynb"
    assert found["02"] == nb_dir / "02_fails.ipynb"
    assert report.resolve_notebooks(None, nb_dir) == [nb_dir / "01_ok.ipynb", nb_dir / "02_fails.ipynb"]
    # order follows the selection; duplicates collapse; "2" means "02"
    assert report.resolve_notebooks(["2", "01_ok", "02_fails.ipynb"], nb_dir) == [
        nb_dir / "02_fails.ipynb", nb_dir / "01_ok.ipynb"]


def test_resolve_unknown_lists_available(nb_dir):
    with pytest.raises(ValueError) as err:
        report.resolve_notebooks(["07", "01"], nb_dir)
    msg = str(err.value)
    assert "07" in msg and "01_ok" in msg and "02_fails" in msg


def test_resolve_unknown_via_cli_is_usage_error(nb_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--notebook-dir", str(nb_dir), "--notebooks", "99"])
    assert exc.value.code == 2
    assert "unknown notebook" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("layers=[1, 2]", ("layers", [1, 2])),
        ("n=3", ("n", 3)),
        ("frac=0.5", ("frac", 0.5)),
        ("flag=true", ("flag", True)),
        ("name=hello world", ("name", "hello world")),
        ("path=a=b", ("path", "a=b")),
        ("empty=", ("empty", "")),
        ("s=\"3\"", ("s", "3")),
    ],
)
def test_parse_param(text, expected):
    assert cli.parse_param(text) == expected


@pytest.mark.parametrize("bad, message", [("noequals", "KEY=VALUE"), ("1x=2", "identifier")])
def test_bad_param_is_usage_error(bad, message, nb_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--notebook-dir", str(nb_dir), "-p", bad])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_reserved_param_is_usage_error(nb_dir, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--notebook-dir", str(nb_dir), "-p", "seed=3"])
    assert "--seed" in capsys.readouterr().err


def test_list(nb_dir, capsys):
    assert cli.main(["list", "--notebook-dir", str(nb_dir)]) == 0
    out = capsys.readouterr().out
    assert "01_ok" in out and "02_fails" in out


def test_index_escapes_and_handles_empty(tmp_path):
    assert "No reports yet" in report.write_index(tmp_path).read_text()
    (tmp_path / "runs.json").write_text(json.dumps({"m/03_x": {"latest": {
        "notebook": "03_x", "model": "<b>evil</b>", "status": "failed", "elapsed": 1.0, "started": "t",
        "error": {"cell": 2, "exec_count": 1, "source": "x<y", "ename": "E", "evalue": "<script>"}},
        "last_good": None}}))
    page = report.write_index(tmp_path).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;evil" in page
    assert "cell 2 (In [1])" in page


# ---------------------------------------------------------------- kernel-backed runs
def test_ok_run_layout_and_results(ok_run, nb_dir):
    rec, out = ok_run
    assert rec.status == "ok" and rec.error is None and rec.elapsed > 0
    base = out / "minilm"
    for rel in ("01_ok.html", "01_ok.ipynb", "01_ok/results.json", "01_ok/items.csv", "01_ok/figures/dot.png"):
        assert (base / rel).is_file(), rel
    assert Path(rec.html) == base / "01_ok.html" and Path(rec.results) == base / "01_ok" / "results.json"
    assert not (out / ".staging").exists()

    results = json.loads((base / "01_ok" / "results.json").read_text())
    # the injected parameters reached the notebook, which ran in its own folder
    assert results["meta"]["seed"] == 7 and results["meta"]["model"] == "minilm"
    assert len(results["tables"]["items"]) == 3
    assert Path(results["meta"]["cwd"]).resolve() == nb_dir.resolve()


def test_ok_run_header_cell(ok_run):
    rec, out = ok_run
    nb = nbformat.read(out / "minilm" / "01_ok.ipynb", as_version=4)
    header = nb.cells[0]
    assert header.cell_type == "markdown" and report.HEADER_TAG in header.metadata["tags"]
    text = header.source
    assert "minilm" in text and "| seed | 7 |" in text and "fixture-rev" in text
    assert "items: 3" in text and "1-indexed" in text and "layer-head" in text
    assert "fixture deviation from the paper" in text
    assert "transformers" in text and "torch" in text
    # the HTML carries the header and the notebook's output
    page = (out / "minilm" / "01_ok.html").read_text()
    assert "fixture deviation from the paper" in page and "3 items for minilm, seed 7" in page


def test_report_has_no_progress_bars_and_warnings_become_one_note(ok_run):
    rec, out = ok_run
    page = (out / "minilm" / "01_ok.html").read_text()
    assert "it/s]" not in page and "fixture bar: " not in page
    nb = nbformat.read(out / "minilm" / "01_ok.ipynb", as_version=4)
    streams = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert streams == []
    header = nb.cells[0].source
    assert header.count("fixture: 2 sentences truncated") == 1 and "UserWarning" in header
    assert "items done" in page  # stdout stays where it was printed


def test_clean_outputs_keeps_messages_once_and_drops_widgets():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    bar = "embed:  40%|####      | 2/5 [00:01<00:02,  1.5it/s]\rembed: 100%|##########| 5/5 [00:03<00:00,  1.6it/s]\n"
    warn = "/a/b/align.py:12: UserWarning: 3 sentences truncated\n  warnings.warn(\n"
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=bar + warn + warn),
                    nbformat.v4.new_output("display_data", data={report._WIDGET_MIME: {"model_id": "x"},
                                                                   "text/plain": "bar"}),
                    nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    nb.cells = [cell]
    assert report.clean_outputs(nb) == ["UserWarning: 3 sentences truncated"]
    assert [o.get("name") for o in cell.outputs] == ["stdout"]


def test_ok_run_log_and_index(ok_run):
    rec, out = ok_run
    runs = json.loads((out / "runs.json").read_text())
    entry = runs["minilm/01_ok"]
    assert entry["latest"]["status"] == "ok" and entry["last_good"] == entry["latest"]
    assert entry["latest"]["html"] == "minilm/01_ok.html"
    assert entry["latest"]["parameters"]["seed"] == 7
    page = report.write_index(out).read_text()
    assert 'href="minilm/01_ok.html"' in page
    assert 'src="minilm/01_ok/figures/dot.png"' in page
    assert "fixture items" in page


def test_failure_keeps_last_good_report(nb_dir, tmp_path, capsys):
    # A good notebook and a failing one under the same stem, in two notebook folders.
    good_dir, bad_dir, out = tmp_path / "good", tmp_path / "bad", tmp_path / "reports"
    good_dir.mkdir(), bad_dir.mkdir()
    shutil.copy(nb_dir / "01_ok.ipynb", good_dir / "02_fails.ipynb")
    shutil.copy(nb_dir / "02_fails.ipynb", bad_dir / "02_fails.ipynb")

    assert cli.main(["run", "--notebook-dir", str(good_dir), "--out", str(out), "--notebooks", "02"]) == 0
    before = _snapshot(out / "minilm", "02_fails*") | _snapshot(out / "minilm", "02_fails/**/*")
    assert {"02_fails.html", "02_fails.ipynb", "02_fails/results.json"} <= set(before)
    capsys.readouterr()

    code = cli.main(["run", "--notebook-dir", str(bad_dir), "--out", str(out), "--notebooks", "02", "--seed", "5"])
    assert code != 0
    printed = capsys.readouterr()
    # cell 5 of the source notebook; In [4] because papermill's injected-parameters cell also ran
    assert "02_fails" in printed.err and "cell 5 (In [4])" in printed.err
    assert "ValueError: boom (seed=5)" in printed.err
    assert printed.out.startswith("failed")

    after = _snapshot(out / "minilm", "02_fails*") | _snapshot(out / "minilm", "02_fails/**/*")
    failed_nb = after.pop("02_fails.failed.ipynb")
    assert after == before  # the good report is untouched, byte for byte
    assert b"boom (seed=5)" in failed_nb
    assert not (out / ".staging").exists()

    entry = json.loads((out / "runs.json").read_text())["minilm/02_fails"]
    assert entry["latest"]["status"] == "failed"
    assert entry["latest"]["error"] == {"cell": 5, "exec_count": 4, "source": 'raise ValueError(f"boom (seed={seed})")',
                                        "ename": "ValueError", "evalue": "boom (seed=5)"}
    assert entry["last_good"]["status"] == "ok"
    page = (out / "index.html").read_text()
    assert "failed" in page and "cell 5 (In [4])" in page
    assert 'href="minilm/02_fails.html"' in page  # still links the last good report


def test_missing_results_json_is_failure(ok_run, nb_dir):
    _, out = ok_run
    before = _snapshot(out / "minilm", "01_ok*")
    rec = report.run_notebook(nb_dir / "01_ok.ipynb", "minilm", out=out, params={"write_results": False})
    assert rec.status == "failed"
    assert rec.error["evalue"] == "notebook wrote no results.json" and rec.error["cell"] is None
    assert (out / "minilm" / "01_ok.failed.ipynb").is_file()
    after = _snapshot(out / "minilm", "01_ok*")
    after.pop("01_ok.failed.ipynb")
    assert after == before


def test_index_puts_key_numbers_of_several_models_side_by_side(tmp_path):
    import json as _json

    from bertology import report

    for model, value, fig, size in (("m-one", 0.25, "b_key", "full"), ("m-two", 0.5, "b_key", "laptop")):
        d = tmp_path / model / "01_x"
        (d / "figures").mkdir(parents=True)
        for name in ("a_first", "b_key"):
            (d / "figures" / f"{name}.png").write_bytes(b"\x89PNG")
        (tmp_path / model / "01_x.html").write_text("<html></html>")
        (d / "results.json").write_text(_json.dumps({
            "meta": {"model": model, "key_figure": fig, "size": size},
            "values": {"key_numbers": {"best head accuracy: det": value}}}))
    table = report.comparison_table(tmp_path)
    assert table.loc[("01_x", "best head accuracy: det")].to_dict() == {"m-one": 0.25, "m-two (laptop)": 0.5}
    page = report.write_index(tmp_path).read_text()
    assert "Models side by side" in page and "0.250" in page and "0.500" in page
    assert "figures/b_key.png" in page and "figures/a_first.png" not in page  # the key figure is the thumbnail


# ---------------------------------------------------------------- parallel jobs
def test_kernel_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(report, "available_cores", lambda: 8)
    assert report.kernel_threads(1) is None  # one job: torch's own default
    assert report.kernel_threads(2) == 4 and report.kernel_threads(3) == 2 and report.kernel_threads(16) == 1
    assert report.kernel_threads(2, threads=3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert report.kernel_threads(2) is None  # the user's setting reaches the kernels unchanged
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="jobs"):
            report.kernel_threads(bad)
    with pytest.raises(ValueError, match="threads"):
        report.kernel_threads(2, threads=0)


def test_longest_first_orders_by_the_last_runs(tmp_path):
    from bertology.io import atomic_write_json

    nbs = [tmp_path / f"{s}.ipynb" for s in ("01_a", "02_b", "03_c", "04_d")]
    assert report.longest_first(nbs, tmp_path, "minilm") == nbs  # unknown notebooks: the given order
    shipped = [tmp_path / f"{s}.ipynb" for s in sorted(report.TYPICAL_SECONDS)]
    first = [p.stem for p in report.longest_first([tmp_path / "09_mine.ipynb", *shipped], tmp_path, "minilm")]
    assert first[:3] == ["09_mine", "04_syntax_probes", "06_numeracy"]  # unknown first, then the typical times
    runs = {"minilm/01_a": {"latest": {"elapsed": 5.0}}, "minilm/03_c": {"latest": {"elapsed": 50.0}},
            "minilm/04_d": {"latest": {"elapsed": 7.5}}, "other/02_b": {"latest": {"elapsed": 99.0}}}
    atomic_write_json(tmp_path / "runs.json", runs)
    # 02_b never ran for this model, so this model's times are not used
    assert report.longest_first(nbs, tmp_path, "minilm") == nbs
    atomic_write_json(tmp_path / "runs.json", {**runs, "minilm/02_b": {"latest": {"elapsed": 6.0}}})
    assert [p.stem for p in report.longest_first(nbs, tmp_path, "minilm")] == ["03_c", "04_d", "02_b", "01_a"]


def test_parallel_jobs_keep_order_isolate_failures_and_set_threads(nb_dir, tmp_path, monkeypatch):
    import os

    d, out = tmp_path / "nbs", tmp_path / "reports"
    d.mkdir()
    for stem in ("01_ok", "03_ok"):
        shutil.copy(nb_dir / "01_ok.ipynb", d / f"{stem}.ipynb")
    shutil.copy(nb_dir / "02_fails.ipynb", d / "02_fails.ipynb")
    from bertology.io import atomic_write_json

    atomic_write_json(out / "runs.json", {f"minilm/{s}": {"latest": {"elapsed": t}}
                                          for s, t in (("01_ok", 5.0), ("02_fails", 1.0), ("03_ok", 9.0))})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    started = []
    recs = report.run(sorted(d.glob("*.ipynb")), out=out, jobs=2, threads=3, on_start=lambda p: started.append(p.stem))
    assert [r.notebook for r in recs] == ["01_ok", "02_fails", "03_ok"]  # the given order, not the run order
    assert [r.status for r in recs] == ["ok", "failed", "ok"]
    assert started[-1] == "02_fails"  # the shortest waits for a free job
    for stem in ("01_ok", "03_ok"):
        meta = json.loads((out / "minilm" / stem / "results.json").read_text())["meta"]
        assert meta["omp_threads"] == "3"  # each kernel got its share of the cores
    assert "OMP_NUM_THREADS" not in os.environ  # restored after the run
    runs = json.loads((out / "runs.json").read_text())
    assert {k: v["latest"]["status"] for k, v in runs.items()} == {
        "minilm/01_ok": "ok", "minilm/02_fails": "failed", "minilm/03_ok": "ok"}
    assert not (out / ".staging").exists()
    assert not list(out.glob("*/*.run.json"))  # each job's record went into runs.json
    assert Path(recs[0].html) == out / "minilm" / "01_ok.html" and Path(recs[0].html).is_file()
    assert recs[1].error and recs[1].error.get("cell")  # the failing cell survives the trip through the job's record
    assert Path(recs[1].ipynb).is_file()


def test_job_command_carries_every_setting_and_parameter(tmp_path):
    params = {"n_items": 3, "label": "true", "layers": [1, 2], "rate": 0.5, "flag": False}
    cmd = report.job_command(tmp_path / "01_x.ipynb", "some/model", out=tmp_path / "r", quick=True, seed=4,
                             device="cuda:1", params=params, kernel_name="k", threads=2)
    assert cmd[1:3] == ["-m", "bertology.cli"]
    args = cli.build_parser().parse_args(cmd[3:])
    assert (args.model, args.out, args.quick, args.seed, args.device, args.kernel, args.threads, args.no_index) == (
        "some/model", str(tmp_path / "r"), True, 4, "cuda:1", "k", 2, True)
    assert args.notebooks == [str((tmp_path / "01_x.ipynb").resolve())]
    assert dict(args.params) == params  # the string "true" stays a string
    with pytest.raises(ValueError, match="JSON"):
        report.job_command(tmp_path / "01_x.ipynb", "m", params={"x": {1, 2}})


@pytest.mark.parametrize("runs_json", [True, False])
def test_a_job_process_that_dies_gives_a_failed_record(tmp_path, monkeypatch, runs_json):
    import sys

    monkeypatch.setattr(report, "job_command", lambda *a, **k: [
        sys.executable, "-c", "import sys; print('loading'); print('out of memory'); sys.exit(3)"])
    out = tmp_path / "reports"
    rec = report.run_job_process(tmp_path / "05_x.ipynb", "minilm", out=out, params={"n": 1}, update_runs=runs_json)
    assert rec.status == "failed" and rec.notebook == "05_x"
    assert rec.error["evalue"] == "the job process exited with status 3 without a run record: loading | out of memory"
    assert rec.parameters["n"] == 1
    if runs_json:
        assert json.loads((out / "runs.json").read_text())["minilm/05_x"]["latest"]["status"] == "failed"
    else:  # a workflow job: the record waits for ``bertology index``
        assert json.loads((out / "minilm" / "05_x.run.json").read_text())["status"] == "failed"
        assert not (out / "runs.json").exists()


def test_jobs_must_be_positive_on_the_command_line(nb_dir, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--notebook-dir", str(nb_dir), "--jobs", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_header_names_the_cpu_threads():
    rec = report.RunRecord(notebook="01_x", model="m", status="ok", elapsed=1.0, started="now", parameters={})
    assert "| device | cpu, 2 CPU threads |" in report.header_markdown(rec, {"device": "cpu", "cpu_threads": 2})
    assert "| device | cpu, 1 CPU thread |" in report.header_markdown(rec, {"device": "cpu", "cpu_threads": 1})
    assert "| device | cuda:0 |" in report.header_markdown(rec, {"device": "cuda:0", "cpu_threads": 2})


def test_kernels_talk_over_unix_sockets_on_posix(tmp_path, monkeypatch):
    import os

    from jupyter_client.manager import AsyncKernelManager

    ipc = report.kernel_manager_class("/tmp")
    assert issubclass(ipc, AsyncKernelManager) and ipc is not AsyncKernelManager
    a, b = ipc(), ipc()
    assert a.transport == "ipc" and AsyncKernelManager().transport == "tcp"
    assert os.path.isabs(a.ip) and a.ip != b.ip  # kernels started side by side get sockets of their own
    assert report.kernel_manager_class(tmp_path / ("x" * 60)) is AsyncKernelManager  # socket paths too long
    monkeypatch.setenv(report.KERNEL_TRANSPORT_ENV, "TCP")  # the way back where Unix sockets cannot be made
    assert report.kernel_manager_class("/tmp") is AsyncKernelManager
    monkeypatch.setenv(report.KERNEL_TRANSPORT_ENV, "udp")
    with pytest.raises(ValueError, match="BERTOLOGY_KERNEL_TRANSPORT='udp'"):
        report.kernel_manager_class("/tmp")
    monkeypatch.delenv(report.KERNEL_TRANSPORT_ENV)
    monkeypatch.setattr(report.os, "name", "nt")
    assert report.kernel_manager_class(tmp_path) is AsyncKernelManager


def test_a_run_prints_no_kernel_transport_warning(nb_dir, tmp_path, capfd):
    rec = report.run_notebook(nb_dir / "01_ok.ipynb", "minilm", out=tmp_path, params={"n_items": 2})
    assert rec.ok
    assert "without encryption" not in capfd.readouterr().err
