# Two set-up commands on a fresh machine:  `make reports`  and  `make test`.
# Each creates/updates .venv from nothing; see README "Choosing torch" for TORCH.
PYTHON ?= python3
VENV   ?= .venv
# torch is installed before the package so that pip never resolves an unpinned `torch`
# (which pulls a multi-GB CUDA build). 2.13.0 is the CPU wheel on this machine's disk;
# elsewhere pip takes 2.13.0 from PyPI. Override, e.g.:  make TORCH="torch==2.9.1" reports
TORCH  ?= torch==2.13.0
MODEL  ?= minilm
NOTEBOOKS ?=
OUT    ?= reports
# Notebooks run at once by `make reports` (bertology run --jobs: each notebook in a process of its
# own, the cores shared out). 2 for the embedded MiniLM (two kernels need about 3 + 4 GB) and for
# SIZE=laptop (bert-base: at most 3.8 GB a notebook); 1 for any other model at full size, whose notebooks
# can each need ~10 GB (bert-base 04): set JOBS=2 where memory allows.
JOBS   ?= $(if $(filter minilm,$(MODEL))$(filter laptop,$(SIZE)),2,1)
# Parallel notebooks in `make bench`/`bench-reports` (its per-notebook table is for one job at a time)
BENCH_JOBS ?= 1
# Compute precision: empty = float32 (the authors'); bfloat16 is ~1.7-3x faster on CPUs with AMX or AVX-512 BF16
# and several times slower on CPUs without bfloat16 arithmetic, where runs refuse it (a declared deviation)
PRECISION ?=
# Device of every forward pass: empty = auto (CUDA when present, else the CPU); e.g. DEVICE=cuda:1
DEVICE ?=
# Sample sizes: empty = full (the notebooks' defaults); laptop caps them (bertology/sizes.py) to about a
# quarter of the work, for bert-base-sized models on a CPU; each report lists what was capped
SIZE ?=
# Tests and CI read the data mirror next to the checkout when it exists.
SHARED_DATA := $(abspath ../shared/data)
export BERTOLOGY_DATA ?= $(if $(wildcard $(SHARED_DATA)/MANIFEST.tsv),$(SHARED_DATA),)

BIN := $(VENV)/bin
STAMP := $(VENV)/.bertology-installed

.PHONY: venv reports reports-quick test bench bench-reports clean-reports
venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,lab]"
	$(BIN)/python -c "import torch, transformers, bertology; print('torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $@

reports: $(STAMP)
	$(BIN)/bertology run --model $(MODEL) --out $(OUT) --jobs $(JOBS) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS),) $(if $(PRECISION),--precision $(PRECISION),) $(if $(DEVICE),--device $(DEVICE),) $(if $(SIZE),--size $(SIZE),)

reports-quick: $(STAMP)
	$(BIN)/bertology run --model $(MODEL) --out $(OUT) --quick --jobs $(JOBS) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS),) $(if $(PRECISION),--precision $(PRECISION),) $(if $(DEVICE),--device $(DEVICE),) $(if $(SIZE),--size $(SIZE),)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# bench: the engine's ratios, the probe epoch, then every notebook at full size for MiniLM and a
# bert-base-shaped checkpoint (long: bert-base took an hour in bfloat16 on a 2-core Zen 4 and would take
# hours in float32 on an AVX2-only CPU; SIZE=laptop BENCH_JOBS=2 took 41 min on a Zen 3, 33 min on a Zen 2 on 2026-12-07,
# 29.5 min on that Zen 2 once extraction left out the masked-LM head and the top layer ran at the read rows only; bench-reports
# alone for the table)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_buckets.py
	$(BIN)/python benchmarks/bench_importance.py
	$(BIN)/python benchmarks/bench_probes.py $(if $(PRECISION),--precision $(PRECISION),)
	$(BIN)/python benchmarks/bench_reports.py --jobs $(BENCH_JOBS) $(if $(QUICK),--quick,) $(if $(PRECISION),--precision $(PRECISION),) $(if $(SIZE),--size $(SIZE),)

bench-reports: $(STAMP)
	$(BIN)/python benchmarks/bench_reports.py --jobs $(BENCH_JOBS) $(if $(QUICK),--quick,) $(if $(PRECISION),--precision $(PRECISION),) $(if $(SIZE),--size $(SIZE),)
