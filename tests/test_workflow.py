"""The Snakemake workflow (bertology workflow), its models file, per-job run records, the feature
cache under concurrent writers and load_model's device_map pass-through."""
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bertology import report, workflow
from bertology.workflow import WorkflowConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
# The two fastest notebooks in quick mode on a 2x2 random model (03: 9.4 s, 05: 10.0 s on this
# machine; 01: 15.7 s, 02: 16.3 s, 04: 20.4 s, 06: 24.8 s, 07: 13.3 s, 08: 20.7 s).
NOTEBOOKS = ("03_head_clustering", "05_semantic_roles")


def _env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               BERTOLOGY_CACHE=str(tmp_path / "cache"))
    return env


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def _checkpoint(tokenizer, path: Path, seed: int) -> Path:
    from bertology.models import random_bert

    m = random_bert(tokenizer, n_layers=2, n_heads=2, hidden_size=16, seed=seed)
    m.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    return _checkpoint(tokenizer, root / "alpha", 1), _checkpoint(tokenizer, root / "beta", 2)


# --------------------------------------------------------------------------- the models file
def _config(tmp_path, text):
    return _write(tmp_path / "models.yaml", text)


def test_config_jobs_commands_inputs_and_resources(tmp_path, checkpoints):
    a, b = checkpoints
    cfg = _config(tmp_path, f"""
        notebooks: ["03", 5]
        quick: true
        defaults: {{device: cpu, batch_size: 16}}
        models:
          - model: {a}
          - model: {b}
            batch_size: 8
            data: sample
            seed: 3
            notebooks: ["05"]
            params: {{max_items: 20}}
            resources: {{threads: 2, mem_mb: 4000}}
        """)
    wf = load_config(cfg, notebook_dir=NB_DIR)
    assert sorted(wf.jobs) == [("alpha", "03_head_clustering"), ("alpha", "05_semantic_roles"),
                               ("beta", "05_semantic_roles")]
    assert wf.out == tmp_path / "reports"  # the file's default, next to the file
    ja, jb = wf.job("alpha", "03_head_clustering"), wf.job("beta", "05_semantic_roles")
    assert ja.args == ("run", "--model", str(a), "--notebooks", "03_head_clustering", "--out", ".",
                       "--seed", "0", "--device", "cpu", "--notebook-dir", str(NB_DIR), "--no-index",
                       "--quick", "-p", "batch_size=16")  # 03 has a data parameter but none was set
    assert jb.args[-6:] == ("-p", "max_items=20", "-p", "batch_size=8", "-p", 'data="sample"')
    assert "--seed" in jb.args and jb.args[jb.args.index("--seed") + 1] == "3"
    assert ja.inputs[0] == str(NB_DIR / "03_head_clustering.ipynb")
    assert str(a / "config.json") in ja.inputs and str(a / "model.safetensors") in ja.inputs
    assert ja.resources == {"threads": 4, "mem_mb": 16000, "runtime": 240, "gpu": 0}  # cpu: no GPU
    assert jb.resources == {"threads": 2, "mem_mb": 4000, "runtime": 240, "gpu": 0}
    assert ja.outputs == ("alpha/03_head_clustering.html", "alpha/03_head_clustering/results.json")
    assert sorted(wf.reports()) == ["alpha/03_head_clustering.html", "alpha/05_semantic_roles.html",
                                    "beta/05_semantic_roles.html"]
    with pytest.raises(KeyError, match="no job for model 'beta' and notebook '03_head_clustering'"):
        wf.job("beta", "03_head_clustering")


def test_params_only_reach_the_notebooks_that_declare_them(tmp_path):
    cfg = _config(tmp_path, """
        models:
          - model: minilm
            notebooks: ["03", "06"]
            data: ewt
        """)
    wf = load_config(cfg, notebook_dir=NB_DIR)
    assert '-p' in wf.job("minilm", "03_head_clustering").args  # 03 has `data`
    assert '-p' not in wf.job("minilm", "06_numeracy").args  # 06 has none
    assert wf.job("minilm", "06_numeracy").resources["gpu"] == 1  # device auto: asks for a GPU


def test_size_is_a_key_of_the_file_and_of_each_model(tmp_path):
    cfg = _config(tmp_path, """
        size: laptop
        notebooks: ["03"]
        models:
          - model: minilm
        """)
    args = load_config(cfg, notebook_dir=NB_DIR).job("minilm", "03_head_clustering").args
    assert args[args.index("--size"):args.index("--size") + 2] == ("--size", "laptop")
    cfg = _config(tmp_path, """
        notebooks: ["03"]
        models:
          - model: minilm
        """)
    assert "--size" not in load_config(cfg, notebook_dir=NB_DIR).job("minilm", "03_head_clustering").args
    cfg = _config(tmp_path, """
        size: laptop
        notebooks: ["03"]
        models:
          - model: minilm
            size: full
        """)
    assert "--size" not in load_config(cfg, notebook_dir=NB_DIR).job("minilm", "03_head_clustering").args


@pytest.mark.parametrize("body, message", [
    ("models:\n  - model: minilm\n    bach_size: 3\n", r"line 3: models\[0\]\.bach_size: unknown key"),
    ("models:\n  - model: minilm\n    batch_size: -1\n", r"line 3: models\[0\]\.batch_size: expected a positive integer"),
    ("models:\n  - model: minilm\n    quick: yes please\n", r"line 3: models\[0\]\.quick: expected true or false"),
    ("models:\n  - model: minilm\n    size: small\n", r"line 3: models\[0\]\.size: expected one of full, laptop"),
    ("models:\n  - model: minilm\n    params: {size: laptop}\n", r"models\[0\]\.params\.size: set size as its own key"),
    ("models:\n  - model: ./nowhere\n", r"line 2: models\[0\]\.model: no such checkpoint directory"),
    ("models:\n  - device: cpu\n", r"line 2: models\[0\]: each entry needs a `model:`"),
    ("models: []\n", r"line 1: models: expected a list of model entries"),
    ("modles:\n  - minilm\n", r"line 1: modles: unknown key"),
    ("models:\n  - model: minilm\n    notebooks: ['99']\n", r"line 3: models\[0\]\.notebooks: unknown notebook"),
    ("models:\n  - model: minilm\n    params: {n_pair: 3}\n",
     r"line 3: models\[0\]\.params\.n_pair: no notebook of this model .* has a parameter 'n_pair'"),
    ("models:\n  - model: minilm\n    params: {seed: 3}\n", r"models\[0\]\.params\.seed: set seed as its own key"),
    ("models:\n  - model: minilm\n    resources: {slurm_partition: gpu}\n",
     r"line 3: models\[0\]\.resources\.slurm_partition: unknown resource"),
    ("defaults: {device: 3}\nmodels:\n  - minilm\n", r"line 1: defaults\.device: expected a device"),
    ("models:\n  - model: minilm\n  - model: minilm\n", r"line 3: models\[1\]\.model: reports of this model would go to minilm/"),
    ("models: [minilm\n", r"line 2: not valid YAML"),
])
def test_config_errors_name_file_line_and_key(tmp_path, body, message):
    cfg = _config(tmp_path, body)
    with pytest.raises(WorkflowConfigError, match=message) as err:
        load_config(cfg, notebook_dir=NB_DIR)
    assert str(err.value).startswith(str(cfg))


def test_missing_models_file(tmp_path):
    with pytest.raises(WorkflowConfigError, match=r"nothing\.yaml: cannot read the models file"):
        load_config(tmp_path / "nothing.yaml")


def test_shipped_files_and_example_config(tmp_path):
    written = workflow.write_files(tmp_path / "wf")
    names = sorted(p.relative_to(tmp_path / "wf").as_posix() for p in written)
    assert names == ["Snakefile", "models.example.yaml", "profiles/slurm/config.yaml"]
    wf = load_config(tmp_path / "wf" / "models.example.yaml", notebook_dir=NB_DIR)
    assert {slug for slug, _ in wf.jobs} == {"minilm", "bert-base-uncased"}
    assert wf.job("bert-base-uncased", "01_attention_patterns").resources["mem_mb"] == 32000


def test_snakemake_command(tmp_path):
    cfg = _config(tmp_path, "out: rep\nmodels: [minilm]\n")
    cmd = workflow.snakemake_command(cfg)
    assert cmd[:3] == [sys.executable, "-m", "snakemake"] and cmd[-2:] == ["--cores", "all"]
    assert cmd[cmd.index("--directory") + 1] == str(tmp_path / "rep")
    assert f"models={cfg}" in cmd
    cmd = workflow.snakemake_command(cfg, out=tmp_path / "other", extra=["--executor", "slurm", "--jobs", "9"])
    assert "--cores" not in cmd and cmd[-4:] == ["--executor", "slurm", "--jobs", "9"]
    assert cmd[cmd.index("--directory") + 1] == str(tmp_path / "other")


def test_cli_workflow_config_error_is_exit_2(tmp_path, capsys):
    from bertology.cli import main

    cfg = _config(tmp_path, "models:\n  - model: minilm\n    batch_size: zero\n")
    assert main(["workflow", "--config", str(cfg), "--", "--dry-run"]) == 2
    assert "line 3: models[0].batch_size: expected a positive integer" in capsys.readouterr().err


# --------------------------------------------------------------------------- job run records
def _record(slug, stem, status, started, elapsed=1.0):
    return {"notebook": stem, "model": slug, "status": status, "elapsed": elapsed, "started": started,
            "error": None if status == "ok" else {"ename": "E", "evalue": "boom"}, "html": None, "ipynb": None,
            "results": None, "parameters": {}, "slug": slug}


def test_merge_job_records(tmp_path):
    out = tmp_path / "rep"
    (out / "m").mkdir(parents=True)
    ok = _record("m", "01_a", "ok", "2026-01-01T10:00:00+00:00")
    (out / "m" / "01_a.run.json").write_text(json.dumps(ok))
    assert report.merge_job_records(out) == 1
    assert not list(out.glob("*/*.run.json"))
    assert report.read_runs(out) == {"m/01_a": {"latest": ok, "last_good": ok}}
    assert report.merge_job_records(out) == 0  # nothing left: merging twice changes nothing

    failed = _record("m", "01_a", "failed", "2026-01-01T11:00:00+00:00")
    stale = _record("m", "01_a", "ok", "2026-01-01T09:00:00+00:00", elapsed=5.0)
    (out / "m" / "01_a.run.json").write_text(json.dumps(failed))
    assert report.merge_job_records(out) == 1
    assert report.read_runs(out)["m/01_a"] == {"latest": failed, "last_good": ok}
    (out / "m" / "01_a.run.json").write_text(json.dumps(stale))  # older than what runs.json lists
    assert report.merge_job_records(out) == 1
    assert report.read_runs(out)["m/01_a"] == {"latest": failed, "last_good": ok}

    (out / "m" / "02_b.run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"02_b\.run\.json: not a readable run record"):
        report.merge_job_records(out)


# --------------------------------------------------------------------------- the local workflow
def _run_workflow(cfg, tmp_path, *extra):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bertology.cli", "workflow", "--config", str(cfg),
                           "--", "--cores", "2", *extra],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr, time.perf_counter() - t0


def _planned(log: str) -> list[tuple[str, str]]:
    """(slug, stem) of every report job snakemake ran or would run, from its log."""
    return sorted(set(re.findall(r"wildcards: slug=([^,\s]+), stem=(\S+)", log)))


@pytest.mark.slow
def test_local_workflow_runs_reruns_nothing_then_only_the_changed_model(tmp_path, checkpoints):
    a, b = checkpoints
    text = f"""
        out: reports
        notebooks: ["03", "05"]
        quick: true
        defaults: {{device: cpu, resources: {{threads: 1}}}}  # two jobs at a time on --cores 2
        models:
          - model: {a}
          - model: {b}
            batch_size: 8
        """
    cfg = _config(tmp_path, text)
    out = tmp_path / "reports"
    log, first = _run_workflow(cfg, tmp_path)
    jobs = [(s, n) for s in ("alpha", "beta") for n in NOTEBOOKS]
    assert _planned(log) == jobs
    htmls = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.html"))
    assert htmls == [f"{s}/{n}.html" for s, n in jobs]
    assert (out / "index.html").is_file()
    runs = report.read_runs(out)
    assert sorted(runs) == [f"{s}/{n}" for s, n in jobs]
    assert {r["latest"]["status"] for r in runs.values()} == {"ok"}
    assert runs["beta/05_semantic_roles"]["latest"]["parameters"]["batch_size"] == 8
    assert not list(out.glob("*/*.run.json"))  # all merged by the index job
    page = (out / "index.html").read_text()
    assert all(f'href="{s}/{n}.html"' in page for s, n in jobs)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/*.html")}
    index_mtime = (out / "index.html").stat().st_mtime_ns

    log, second = _run_workflow(cfg, tmp_path)
    assert "Nothing to be done" in log and _planned(log) == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.html")} == mtimes

    _config(tmp_path, text.replace("batch_size: 8", "batch_size: 4"))  # edit beta's entry only
    log, third = _run_workflow(cfg, tmp_path)
    assert _planned(log) == [("beta", n) for n in NOTEBOOKS]
    for p, m in mtimes.items():
        assert (p.stat().st_mtime_ns == m) == (p.parent.name == "alpha"), p
    assert (out / "index.html").stat().st_mtime_ns > index_mtime
    assert report.read_runs(out)["beta/03_head_clustering"]["latest"]["parameters"]["batch_size"] == 4

    # Re-exporting alpha's checkpoint with a changed config reruns alpha's jobs only. (A bare
    # `touch` does not: snakemake also compares the checksums of small input files.)
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    log, _ = _run_workflow(cfg, tmp_path, "--dry-run")
    assert _planned(log) == [("alpha", n) for n in NOTEBOOKS]
    print(f"\nworkflow: 4 jobs {first:.1f} s, no-op {second:.1f} s, 2 changed jobs {third:.1f} s")


# --------------------------------------------------------------------------- the feature cache
_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from bertology.extract import FeatureCache, Item
path, go, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for _ in range(rounds):
    w = FeatureCache(path).writer("float32")
    for i in range(12):
        w.add(Item(i, None, np.full((2, 2, 40, 40), i, np.float32), np.full((3, 40, 64), -i, np.float32)))
        if i % 3 == 2:
            w.flush()
    w.commit()
"""


def _check_entry(path: Path) -> bool:
    """True for a complete entry with the expected arrays, False for none; anything else fails."""
    from bertology.extract import FeatureCache

    cache = FeatureCache(path)
    try:
        names = os.listdir(path)  # one look: the entry appears whole (a rename) or not at all
    except FileNotFoundError:
        return False
    assert "index.json" in names, f"an entry folder without index: {names}"
    assert cache.valid(), "an entry with an index whose shards do not match"
    items = list(cache.read([None] * 12))
    assert [it.index for it in items] == list(range(12))
    for it in items:
        assert np.array_equal(it.attention, np.full((2, 2, 40, 40), it.index, np.float32))
        assert np.array_equal(it.hidden, np.full((3, 40, 64), -it.index, np.float32))
    return True


def test_feature_cache_two_concurrent_writers_of_one_key(tmp_path):
    """Two processes write the same entry over and over while this one reads it: every read
    sees a complete, correct entry or none, and both writers finish without error."""
    path, go = tmp_path / "features" / "key", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(go), "15"], env=_env(tmp_path),
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    seen = []
    while any(p.poll() is None for p in procs):
        seen.append(_check_entry(path))
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert _check_entry(path) and True in seen
    assert sorted(p.name for p in path.parent.iterdir()) == ["key"]  # no temporary folders left


# --------------------------------------------------------------------------- large models
def test_load_model_hands_device_map_to_from_pretrained(tmp_path, tokenizer, monkeypatch):
    import transformers

    from bertology.models import load_model

    ckpt = _checkpoint(tokenizer, tmp_path / "m", 0)
    seen = {}
    real = transformers.AutoModelForMaskedLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", spy)
    load_model(str(ckpt), device="cpu")
    assert "device_map" not in seen
    loaded = load_model(str(ckpt), device_map="auto")
    assert seen["device_map"] == "auto" and seen["attn_implementation"] == "eager"
    assert loaded.device.type == "cpu" and loaded.info.has_mlm_head  # the only device here
    assert loaded.info.revision == load_model(str(ckpt), device="cpu").info.revision


def test_failed_job_keeps_its_record_for_the_index(tmp_path):
    """A failing notebook fails its job; with --keep-going the other job finishes, the failed
    run's record and executed notebook stay, and `bertology index` lists the failure."""
    fixtures = ROOT / "tests" / "fixtures" / "notebooks"
    cfg = _config(tmp_path, f"""
        notebook_dir: {fixtures}
        models:
          - model: minilm
            params: {{n_items: 3}}
        """)
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "bertology.cli", "workflow", "--config", str(cfg),
                           "--", "--cores", "2", "--keep-going"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert (out / "minilm" / "01_ok.html").is_file() and (out / "minilm" / "02_fails.failed.ipynb").is_file()
    assert not (out / "index.html").exists()  # the index job needs every report
    assert "ValueError" in (out / ".logs" / "minilm" / "02_fails.log").read_text()
    assert json.loads((out / "minilm" / "02_fails.run.json").read_text())["status"] == "failed"

    from bertology.cli import main

    assert main(["index", "--out", str(out)]) == 0
    runs = report.read_runs(out)
    assert runs["minilm/02_fails"]["latest"]["error"]["evalue"] == "boom (seed=0)"
    assert runs["minilm/01_ok"]["latest"]["parameters"]["n_items"] == 3
    assert "boom (seed=0)" in (out / "index.html").read_text()
