# dv: every target sets up what it needs first (a venv in .venv with the pinned requirements).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DV := $(VENV)/bin/dv
SHARDS ?= data/shards/camera-pans
RUNS ?= runs

.PHONY: install lint test test-fast shards tiny-shards discs-shards pretrained pretrained-t2v pretrained-image-models pretrained-dreamvideo pretrained-dynamicrafter latents demo claims app bench-loader bench-sampling clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-app.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-app.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, lightning, torchmetrics, webdataset, av, einops, open_clip, skimage, tensorboard, diffusers, gradio, gradio_client; from torchvision.ops import nms"
	touch $@

# Style (ruff) and the layering of docs/architecture.md (import-linter; contracts in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q tests

test-fast: lint
	$(PY) -m pytest -q -m "not slow" tests

# SHARD_ARGS passes builder options (e.g. SHARD_ARGS="--size 64").
SHARD_ARGS ?=
shards: install
	$(DV) shards --source camera-pans --out $(SHARDS) $(SHARD_ARGS)

# Latent shards of the demo data, encoded once by the demo recipes' autoencoder (both stages share it).
LATENTS ?= data/latents/camera-pans
latents: shards
	$(DV) cache-latents --recipe recipes/demo-t2v.yaml --shards "$(SHARDS)/train-*.tar" "$(SHARDS)/val-*.tar" --out $(LATENTS)

# The tiny shards every shipped model and the demo train on: camera-pans rendered at 64 px, 8 frames, 16 clips per
# photo and move; the recipes read them as 32x32 frames (pans move 1.25-2.25 px per frame there).
TINY_SHARDS ?= data/shards/camera-pans-64
tiny-shards: install
	$(DV) shards --source camera-pans --out $(TINY_SHARDS) --size 64 --frames 8 --clips-per-video 16

# The tiny shards' training split with 48 views of each photo and 48 families of dead-leaves pictures (a new picture
# per clip): 5,760 clips for recipes/tiny-dreamvideo-discs.yaml, whose held-out clips are the tiny shards' val split.
DISCS_SHARDS ?= data/shards/camera-pans-64-discs
discs-shards: install
	$(DV) shards --source camera-pans --out $(DISCS_SHARDS) --size 64 --frames 8 --clips-per-video 16 --split train \
		--photo-views 48 --synthetic-photos 48

# The shipped models (pretrained/), from scratch: the T2V backbone, then DreamVideo and the DynamiCrafter-style model
# on it side by side (one thread each). Interrupted, it resumes (--resume-if-exists). Each stage ends in a `dv export`
# into pretrained/NAME/model.safetensors; git diff shows whether the weights changed.
TINY_DATA = --data.init_args.train_shards="$(TINY_SHARDS)/train-*.tar" --data.init_args.val_shards="$(TINY_SHARDS)/val-*.tar" \
	--trainer.logger.init_args.save_dir=$(RUNS)
pretrained: pretrained-image-models

pretrained-t2v: tiny-shards
	$(DV) fit --recipe pretrained/tiny-t2v/config.yaml --resume-if-exists $(TINY_DATA)
	$(DV) export --recipe $(RUNS)/tiny-t2v/latest/config.yaml --ckpt $(RUNS)/tiny-t2v/latest/checkpoints/last.ckpt \
		--out pretrained/tiny-t2v/model.safetensors

pretrained-image-models: pretrained-t2v
	$(MAKE) -j2 pretrained-dreamvideo pretrained-dynamicrafter

pretrained-dreamvideo pretrained-dynamicrafter: pretrained-%:
	OMP_NUM_THREADS=1 $(DV) fit --recipe pretrained/tiny-$*/config.yaml --resume-if-exists $(TINY_DATA)
	$(DV) export --recipe $(RUNS)/tiny-$*/latest/config.yaml --ckpt $(RUNS)/tiny-$*/latest/checkpoints/last.ckpt \
		--out pretrained/tiny-$*/model.safetensors

# The CPU demo: DreamVideo (retention branch + temporal layers) trained on the shipped T2V backbone
# (pretrained/tiny-t2v), as the paper trains on ModelScope's; then validation and a sample of a held-out photo.
# FIT_ARGS passes LightningCLI overrides (e.g. FIT_ARGS=--trainer.max_steps=10).
FIT_ARGS ?=
# The sampled photo is held out; its reference is the centred window at the scale the training clips show photos.
DEMO_PHOTO ?= rocket
DEMO_PROMPT ?= the camera pans left over a photo of a rocket on a launch pad
demo: tiny-shards
	$(DV) check-data --shards "$(TINY_SHARDS)/train-*.tar" --batch-size 4
	$(DV) fit --recipe recipes/demo.yaml --resume-if-exists $(TINY_DATA) $(FIT_ARGS)
	$(DV) export --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt \
		--out $(RUNS)/demo/export.safetensors
	$(DV) validate --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt
	$(DV) trajectory --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt \
		--shards "$(TINY_SHARDS)/val-*.tar" --clips 4 --steps 10
	$(DV) info --recipe recipes/demo.yaml
	$(PY) -c "from PIL import Image; from dv.data.camera_pans import reference_view; Image.fromarray(reference_view('$(DEMO_PHOTO)', 256)).save('$(RUNS)/demo/$(DEMO_PHOTO).png')"
	$(DV) sample --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/export.safetensors \
		--image $(RUNS)/demo/$(DEMO_PHOTO).png --prompt "$(DEMO_PROMPT)" --steps 20 --guidance-text 3 --guidance-image 2 \
		--gif --strip --out $(RUNS)/demo/sample.mp4
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(RUNS)"

# The claims experiment (docs/claims.md): the shipped models (pretrained/) sampled on the held-out
# photos under every condition, then every table and the figure from one sampling run. Its held-out clips are the
# tiny shards' val split at 4 clips per photo and move (96 clips; the same renderer settings as training).
CLAIMS_SHARDS ?= data/shards/camera-pans-64-claims
# CLAIMS_JOBS: sampling processes (one thread each on 2 cores: more videos per second than one with two threads).
CLAIMS_JOBS ?= 2
claims: install
	$(DV) shards --source camera-pans --out $(CLAIMS_SHARDS) --size 64 --frames 8 --clips-per-video 4 --split val
	$(DV) claims --val-shards "$(CLAIMS_SHARDS)/val-*.tar" --out $(RUNS)/claims --figure docs/claims.png --jobs $(CLAIMS_JOBS) \
		--model T2V=pretrained/tiny-t2v/config.yaml,pretrained/tiny-t2v/model.safetensors \
		--model DreamVideo=pretrained/tiny-dreamvideo/config.yaml,pretrained/tiny-dreamvideo/model.safetensors \
		--model DynamiCrafter=pretrained/tiny-dynamicrafter/config.yaml,pretrained/tiny-dynamicrafter/model.safetensors

# The browser page over the shipped DreamVideo model (APP_ARGS: e.g. APP_ARGS="--port 8000"; APP_RECIPE/APP_CKPT for another).
APP_ARGS ?=
APP_RECIPE ?= pretrained/tiny-dreamvideo/config.yaml
APP_CKPT ?= pretrained/tiny-dreamvideo/model.safetensors
app: install
	$(DV) app --recipe $(APP_RECIPE) --ckpt $(APP_CKPT) --out-dir $(RUNS)/app $(APP_ARGS)

bench-sampling: install
	$(PY) -m pip install --quiet transformers   # the stock diffusers pipeline imports it; dv does not
	$(PY) benchmarks/sampling.py --recipe recipes/demo.yaml

bench-loader: shards
	$(PY) benchmarks/loader.py --shards "$(SHARDS)/train-*.tar"

clean:
	rm -rf $(VENV) data $(RUNS)
