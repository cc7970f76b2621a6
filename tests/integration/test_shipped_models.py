"""The models dv ships in pretrained/: each matches its recipe, and the DreamVideo one still does what its card says.

A code change that breaks the shipped weights (a renamed layer, another noise schedule, a sampler bug) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dv.checkpoint import load_trained
from dv.claims.experiment import ClaimsConfig, ClaimsRun
from dv.claims.report import accuracy
from dv.lit.export import plain
from dv.recipe import build_model, load_recipe

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("tiny-t2v", "tiny-dreamvideo", "tiny-dynamicrafter")
# The setting and figures the model card reports (pretrained/tiny-dreamvideo/README.md, `dv card`).
CARD_STEPS, CARD_S_TEXT, CARD_S_IMAGE = 20, 3.0, 2.0
CARD_CORRECT, CARD_FFF_SSIM = 6, 0.500  # of 24 videos; mean first-frame SSIM against the reference


@pytest.fixture
def in_repo(monkeypatch):
    """The shipped recipes name the backbone's weights relative to the repository, as users run them."""
    monkeypatch.chdir(REPO)


def subset(saved, built):
    """`built` cut down to the keys of `saved`, recursively through nested settings."""
    if isinstance(saved, dict) and isinstance(built, dict):
        return {k: subset(v, built.get(k)) for k, v in saved.items()}
    return built


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_its_recipe(name, in_repo):
    folder = REPO / "pretrained" / name
    assert (folder / "README.md").is_file(), "every shipped model has a model card"
    recipe, weights = folder / "config.yaml", folder / "model.safetensors"
    module = build_model(str(recipe))
    module.configure_model()
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert metadata["module"] == type(module).__name__
    # Exactly the recipe's trainable weights, with its shapes: nothing missing, nothing foreign.
    assert shapes == {n.removeprefix("backbone."): tuple(p.shape) for n, p in module.trainable_parameters()}
    # The settings it was trained with are the recipe's model section.
    saved = json.loads(metadata["hyper_parameters"])
    built = plain(dict(module.hparams))
    # LightningCLI also saves how it built the module: its class path, which must be the recipe's.
    assert saved.pop("_class_path", None) in (None, load_recipe(str(recipe))["model"]["class_path"])
    for hp in (saved, built):
        hp.pop("_instantiator", None)
        hp.pop("_class_path", None)
    # Every setting saved at training time is the recipe's (a subclass may record derived ones, e.g. `trainable`;
    # options added to dv since, such as backbone.compile_regions, keep their defaults and were not saved).
    assert saved and subset(saved, built) == saved
    # And it loads: every exported tensor ends up in the module.
    loaded = load_trained(str(recipe), str(weights))
    params = dict(loaded.trainable_parameters())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            torch.testing.assert_close(params[f"backbone.{key}" if key.startswith("unet.") else key], f.get_tensor(key))


def test_shipped_recipes_share_the_backbone(in_repo):
    """The image models were trained on the shipped T2V backbone, with its noise process."""
    t2v = load_recipe("pretrained/tiny-t2v/config.yaml")["model"]["init_args"]
    for name in ("tiny-dreamvideo", "tiny-dynamicrafter"):
        model = load_recipe(f"pretrained/{name}/config.yaml")["model"]["init_args"]
        assert model["backbone"]["unet_weights"] == ["pretrained/tiny-t2v/model.safetensors"]
        assert model["backbone"]["unet"] == t2v["backbone"]["unet"]
        assert model["diffusion"] == t2v["diffusion"]


@pytest.mark.slow
def test_shipped_dreamvideo_keeps_its_card(in_repo):
    """Text + image on the four held-out photos under all six motion captions: the figures of the model card.

    Sampling is seeded, so on one machine the figures repeat exactly; the margins allow another CPU's float
    reductions to move a video or two. A broken sampler, noise schedule or weight loading falls far below them.
    """
    folder = REPO / "pretrained" / "tiny-dreamvideo"
    module = load_trained(str(folder / "config.yaml"), str(folder / "model.safetensors"))
    run = ClaimsRun(ClaimsConfig(seeds=(0,), steps=CARD_STEPS), progress=False)
    run.run_setting("DreamVideo", module, "ti2v", CARD_S_TEXT, CARD_S_IMAGE)
    assert len(run.rows) == 24
    assert accuracy(run.rows) * 24 >= CARD_CORRECT - 2, [(r["motion"], r["predicted"]) for r in run.rows]
    assert sum(r["ssim"] for r in run.rows) / 24 >= CARD_FFF_SSIM - 0.05
