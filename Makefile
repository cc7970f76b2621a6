# dv: every target sets up what it needs first (a venv in .venv with the pinned requirements).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DV := $(VENV)/bin/dv
SHARDS ?= data/shards/camera-pans
RUNS ?= runs

.PHONY: install test test-fast shards demo bench-loader clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, lightning, torchmetrics, webdataset, av, einops, open_clip, skimage, tensorboard, diffusers; from torchvision.ops import nms"
	touch $@

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

shards: install
	$(PY) -m data_prep build --source camera-pans --out $(SHARDS)

# The CPU demo: shards, a tiny T2V backbone (stage 1), then DreamVideo on it (stage 2).
demo: shards
	$(PY) -m dv.data.datamodule --shards "$(SHARDS)/train-*.tar" --batch-size 4
	$(DV) fit --recipe recipes/demo-t2v.yaml --ckpt_path last
	$(DV) export --recipe recipes/demo-t2v.yaml --ckpt $(RUNS)/demo-t2v/latest/checkpoints/last.ckpt --out $(RUNS)/demo-t2v/export.safetensors
	$(DV) fit --recipe recipes/demo.yaml --ckpt_path last
	$(DV) export --recipe recipes/demo.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt --out $(RUNS)/demo/export.safetensors
	$(DV) info --recipe recipes/demo.yaml

bench-loader: shards
	$(PY) benchmarks/loader.py --shards "$(SHARDS)/train-*.tar"

clean:
	rm -rf $(VENV) data $(RUNS)
