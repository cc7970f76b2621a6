"""The claims pipeline end to end on a reduced scale: train both models a few steps, sample, score, report.

This checks the pipeline (every table, the figure, the rows), not the claims: those need `make claims`.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from dv.claims.__main__ import main as claims_main
from dv.cli import main as dv_main
from tests.integration.test_fit import fit, tiny_recipe


def test_claims_pipeline_writes_every_table(tmp_path, pans_shards):
    t2v = tiny_recipe(tmp_path, pans_shards, "t2v", source="recipes/claims-t2v.yaml", max_steps=2)
    fit(t2v)
    t2v_run = tmp_path / "runs" / "t2v" / "latest"
    backbone = tmp_path / "t2v.safetensors"
    assert dv_main(["export", "--recipe", str(t2v_run / "config.yaml"), "--ckpt", str(t2v_run / "checkpoints" / "last.ckpt"),
                    "--out", str(backbone)]) == 0
    dream = tiny_recipe(tmp_path, pans_shards, "dreamvideo", source="recipes/claims.yaml", max_steps=2)
    fit(dream, f"--model.init_args.backbone.unet_weights=[{backbone}]")
    dream_run = tmp_path / "runs" / "dreamvideo" / "latest"
    crafter = tiny_recipe(tmp_path, pans_shards, "dynamicrafter", source="recipes/claims-dynamicrafter.yaml", max_steps=2)
    fit(crafter, f"--model.init_args.backbone.unet_weights=[{backbone}]", "--model.init_args.projection.num_frames=4")
    crafter_run = tmp_path / "runs" / "dynamicrafter" / "latest"

    out = tmp_path / "claims"
    code = claims_main([
        "--model", f"T2V={t2v_run / 'config.yaml'},{backbone}",
        "--model", f"DreamVideo={dream_run / 'config.yaml'},{dream_run / 'checkpoints' / 'last.ckpt'}",
        "--model", f"DynamiCrafter={crafter_run / 'config.yaml'},{crafter_run / 'checkpoints' / 'last.ckpt'}",
        "--val-shards", str(pans_shards / "val-*.tar"), "--out", str(out), "--seeds", "0", "1", "--steps", "2", "--quick",
    ])
    assert code == 0
    text = (out / "results.md").read_text()
    for heading in ("Fidelity and text control of motion", "Condition ablation (DreamVideo)", "Guidance scales (DreamVideo",
                    "Confusion matrix (DreamVideo", "Confusion matrix (T2V, text only)", "Chained two-stage inference",
                    "FVD: not measured"):
        assert heading in text, heading
    assert "| T2V | text only |" in text and "| T2V | text + image, zero-shot (TI2V-Zero) |" in text
    assert "| DreamVideo | text + image |" in text and "| DynamiCrafter | text + image |" in text
    assert "Condition ablation (DynamiCrafter)" in text
    probe_rows = [line for line in text.splitlines() if line.startswith(("| T2V | ", "| DreamVideo | ", "| DynamiCrafter | "))
                  and line.split("|")[2].strip() in ("200", "500", "800")]
    assert len(probe_rows) == 3 * 3  # the caption probe: three models × three timesteps
    assert all(0.0 <= float(r.split("|")[3]) <= 1.0 for r in probe_rows)
    rows = json.loads((out / "rows.json").read_text())
    made = {(r["model"], r["mode"]) for r in rows}
    assert made == {("ground truth", "real"), ("T2V", "t2v"), ("T2V", "zero_shot"), ("DreamVideo", "ti2v"),
                    ("DreamVideo", "i2v"), ("DreamVideo", "t2v"), ("DreamVideo", "chained-stage1"),
                    ("DreamVideo", "chained-stage2")} | {("DynamiCrafter", mode) for mode in
                                                       ("ti2v", "i2v", "t2v", "chained-stage1", "chained-stage2")}
    # 4 held-out photos x 6 captions x 2 seeds per sampled setting
    assert sum(1 for r in rows if (r["model"], r["mode"]) == ("DreamVideo", "ti2v")) == 4 * 6 * 2
    truth = [r for r in rows if r["model"] == "ground truth"]
    # The estimator reads real clips (4 frames of 16x16 here; 96/96 at the experiment's 8 frames of 32x32).
    assert truth and np.mean([r["predicted"] == r["motion"] for r in truth]) >= 0.75
    assert all(-1.0 <= r["ssim"] <= 1.0 for r in rows if "ssim" in r)
    figure = Image.open(out / "claims.png")
    assert figure.width > 4 * 16 and figure.height > 6 * 16
