# dv: every target sets up what it needs first (a venv in .venv with the pinned requirements).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DV := $(VENV)/bin/dv
SHARDS ?= data/shards/camera-pans
RUNS ?= runs

.PHONY: install test test-fast shards latents demo claims claims-models claims-backbone claims-dreamvideo claims-dynamicrafter app bench-loader bench-sampling clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-app.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-app.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, lightning, torchmetrics, webdataset, av, einops, open_clip, skimage, tensorboard, diffusers, gradio, gradio_client; from torchvision.ops import nms"
	touch $@

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# SHARD_ARGS passes builder options (e.g. SHARD_ARGS="--size 64").
SHARD_ARGS ?=
shards: install
	$(PY) -m data_prep build --source camera-pans --out $(SHARDS) $(SHARD_ARGS)

# Latent shards of the demo data, encoded once by the demo recipes' autoencoder (both stages share it).
LATENTS ?= data/latents/camera-pans
latents: shards
	$(DV) cache-latents --recipe recipes/demo-t2v.yaml --shards "$(SHARDS)/train-*.tar" "$(SHARDS)/val-*.tar" --out $(LATENTS)

# The CPU demo: shards, a tiny T2V backbone (stage 1), then DreamVideo on it (stage 2).
# FIT_ARGS passes LightningCLI overrides to both stages (e.g. FIT_ARGS=--trainer.max_steps=10).
FIT_ARGS ?=
# The sampled photo is held out; its reference is the centred window at the scale the training clips show photos.
DEMO_PHOTO ?= rocket
DEMO_PROMPT ?= the camera pans left over a photo of a rocket on a launch pad
DEMO_DATA = --data.init_args.train_shards="$(SHARDS)/train-*.tar" --data.init_args.val_shards="$(SHARDS)/val-*.tar" \
	--trainer.logger.init_args.save_dir=$(RUNS)
demo: shards
	$(PY) -m dv.data.datamodule --shards "$(SHARDS)/train-*.tar" --batch-size 4
	$(DV) fit --recipe recipes/demo-t2v.yaml --resume-if-exists $(DEMO_DATA) $(FIT_ARGS)
	$(DV) export --recipe $(RUNS)/demo-t2v/latest/config.yaml --ckpt $(RUNS)/demo-t2v/latest/checkpoints/last.ckpt \
		--out $(RUNS)/demo-t2v/export.safetensors
	$(DV) fit --recipe recipes/demo.yaml --resume-if-exists $(DEMO_DATA) $(FIT_ARGS) \
		--model.init_args.backbone.unet_weights='[$(RUNS)/demo-t2v/export.safetensors]'
	$(DV) export --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt \
		--out $(RUNS)/demo/export.safetensors
	$(DV) validate --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt
	$(PY) -m dv.diffusion.trajectory --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/latest/checkpoints/last.ckpt \
		--shards "$(SHARDS)/val-*.tar" --clips 4 --steps 10
	$(DV) info --recipe recipes/demo.yaml
	$(PY) -c "from PIL import Image; from data_prep.camera_pans import reference_view; Image.fromarray(reference_view('$(DEMO_PHOTO)', 256)).save('$(RUNS)/demo/$(DEMO_PHOTO).png')"
	$(DV) sample --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/export.safetensors \
		--image $(RUNS)/demo/$(DEMO_PHOTO).png --prompt "$(DEMO_PROMPT)" --steps 25 --guidance-text 3 --guidance-image 3 \
		--gif --strip --out $(RUNS)/demo/sample.mp4
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(RUNS)"

# The browser page over the model `make demo` trained (APP_ARGS: e.g. APP_ARGS="--port 8000").
APP_ARGS ?=
# The claims experiment (README "What dv reproduces"): camera-pans shards at 96 px, a T2V backbone, DreamVideo
# and a DynamiCrafter-style model on it, then every table and the figure from one sampling run.
# Interrupted, it resumes (finished shards and trained stages are kept).
CLAIMS_SHARDS ?= data/shards/camera-pans-claims
CLAIMS_DATA = --data.init_args.train_shards="$(CLAIMS_SHARDS)/train-*.tar" --data.init_args.val_shards="$(CLAIMS_SHARDS)/val-*.tar" \
	--trainer.logger.init_args.save_dir=$(RUNS)
CLAIMS_BACKBONE = --model.init_args.backbone.unet_weights='[$(RUNS)/claims-t2v/export.safetensors]'
# CLAIMS_JOBS: sampling processes (one thread each on 2 cores: more videos per second than one with two threads).
CLAIMS_JOBS ?= 2
claims: claims-models
	$(PY) -m dv.claims --val-shards "$(CLAIMS_SHARDS)/val-*.tar" --out $(RUNS)/claims --figure docs/claims.png --jobs $(CLAIMS_JOBS) \
		--model T2V=$(RUNS)/claims-t2v/latest/config.yaml,$(RUNS)/claims-t2v/export.safetensors \
		--model DreamVideo=$(RUNS)/claims-dreamvideo/latest/config.yaml,$(RUNS)/claims-dreamvideo/latest/checkpoints/last.ckpt \
		--model DynamiCrafter=$(RUNS)/claims-dynamicrafter/latest/config.yaml,$(RUNS)/claims-dynamicrafter/latest/checkpoints/last.ckpt

# The two image-conditioned models train side by side on the T2V backbone, one thread each (on 2 cores this
# is faster than one after the other with 2 threads: small CPU kernels scale poorly across threads).
claims-models: claims-backbone
	$(MAKE) -j2 claims-dreamvideo claims-dynamicrafter

claims-backbone: install
	$(PY) -m data_prep build --source camera-pans --out $(CLAIMS_SHARDS) --size 96 --clips-per-video 4
	$(DV) fit --recipe recipes/claims-t2v.yaml --resume-if-exists $(CLAIMS_DATA)
	$(DV) export --recipe $(RUNS)/claims-t2v/latest/config.yaml --ckpt $(RUNS)/claims-t2v/latest/checkpoints/last.ckpt \
		--out $(RUNS)/claims-t2v/export.safetensors

claims-dreamvideo:
	OMP_NUM_THREADS=1 $(DV) fit --recipe recipes/claims.yaml --resume-if-exists $(CLAIMS_DATA) $(CLAIMS_BACKBONE)

claims-dynamicrafter:
	OMP_NUM_THREADS=1 $(DV) fit --recipe recipes/claims-dynamicrafter.yaml --resume-if-exists $(CLAIMS_DATA) $(CLAIMS_BACKBONE)

app: install
	@test -f $(RUNS)/demo/export.safetensors || { echo "no demo model in $(RUNS)/demo: run make demo first"; exit 1; }
	$(DV) app --recipe $(RUNS)/demo/latest/config.yaml --ckpt $(RUNS)/demo/export.safetensors --out-dir $(RUNS)/app $(APP_ARGS)

bench-sampling: install
	$(PY) -m pip install --quiet transformers   # the stock diffusers pipeline imports it; dv does not
	$(PY) benchmarks/sampling.py --recipe recipes/demo.yaml

bench-loader: shards
	$(PY) benchmarks/loader.py --shards "$(SHARDS)/train-*.tar"

clean:
	rm -rf $(VENV) data $(RUNS)
