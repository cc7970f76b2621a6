"""`dv bench`: the figures it prints for a tiny recipe on the CPU, and the FLOP counter it uses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dv.bench.flops import count_flops, mfu, peak_bf16_flops
from dv.cli import main


def figure(out: str, label: str) -> str:
    """The value printed after `label` on its own line."""
    match = re.search(rf"^{re.escape(label)}\s+(.+)$", out, re.M)
    assert match, f"{label!r} not printed in:\n{out}"
    return match.group(1)


def test_flops_equal_a_hand_count():
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8 * 4 * 4, 5)
    x = torch.randn(2, 3, 4, 4)

    def step():
        linear(conv(x).flatten(1)).sum().backward()

    # 2 FLOPs per multiply-add. Conv: forward, and the weight gradient (x needs none). Linear: forward,
    # and the input and weight gradients.
    conv_fwd = 2 * (2 * 8 * 4 * 4) * (3 * 3 * 3)
    linear_fwd = 2 * 2 * (8 * 4 * 4) * 5
    assert count_flops(step) == 2 * conv_fwd + 3 * linear_fwd

    q = torch.randn(2, 4, 16, 8)  # attention: CPU SDPA counts as QK^T and AV
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == 2 * (
        2 * 2 * 4 * 16 * 16 * 8
    )


def test_step_flops_are_one_clips_times_the_batch(tiny_recipe):
    # dv bench counts a step's FLOPs on one clip and multiplies (a full-size batch without recomputation does
    # not fit on a GPU): that must be the whole batch's count.
    from dv.bench.dvpath import loss_and_backward
    from dv.bench.workload import build_workload

    work = build_workload(tiny_recipe, 3, "cpu")
    work.module.train()
    one, batch = count_flops(loss_and_backward(work, clips=1)), count_flops(loss_and_backward(work))
    assert one > 0 and batch == 3 * one


def test_mfu_and_peak_table(monkeypatch):
    assert peak_bf16_flops(torch.device("cpu")) is None and mfu(1e12, 1.0, None) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    peak = peak_bf16_flops(torch.device("cuda", 0))
    assert peak == 989.4e12 and mfu(98.94e12, 0.5, peak) == pytest.approx(0.2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA A100-SXM4-80GB")
    assert peak_bf16_flops(torch.device("cuda", 0)) == 312e12


def test_train_bench_prints_and_writes_the_figures(tiny_recipe, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--recipe",
                tiny_recipe,
                "--steps",
                "2",
                "--warmup",
                "1",
                "--device",
                "cpu",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "batch 2 × 4 frames × 16×16" in figure(out, "setting")
    for who in ("dv", "plain"):
        assert float(figure(out, f"{who} s/step").split()[0]) > 0
        assert float(figure(out, f"{who} clips/s")) > 0
        assert figure(out, f"{who} peak memory").endswith("GiB (process RSS peak)")
    assert "Lightning Trainer.fit" in figure(out, "dv s/step")
    assert re.match(r"[\d.]+× \(throughput [\d.]+×\)", figure(out, "dv / plain time"))
    assert figure(out, "MFU") == "no MFU (CPU)"
    figures = json.loads(out_json.read_text())
    assert figures["flops_per_step"] > 0 and float(figure(out, "FLOPs/step").split()[0]) == pytest.approx(
        figures["flops_per_step"], rel=1e-3
    )
    assert len(figures["dv"]["times"]) == len(figures["plain"]["times"]) == 2
    assert figures["ratio_dv_to_plain"] == pytest.approx(
        figures["dv"]["seconds_per_step"] / figures["plain"]["seconds_per_step"]
    )


def test_sample_bench(tiny_recipe, capsys):
    assert (
        main(
            [
                "bench",
                "--recipe",
                tiny_recipe,
                "--what",
                "sample",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--ddim-steps",
                "2",
                "--batch-size",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "VideoSampler.sample" in figure(out, "dv s/video")
    assert float(figure(out, "plain s/DDIM step")) > 0 and float(figure(out, "FLOPs/video").split()[0]) > 0


def test_bad_flags_are_one_line_errors(tiny_recipe, capsys):
    assert main(["bench", "--recipe", tiny_recipe, "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "dv: error: --steps must be at least 1, not 0"


@pytest.mark.slow
def test_explain_finds_one_graph_without_breaks(tiny_recipe, tmp_path, capsys):
    """The denoiser (U-Net + the branch's residuals, blocks checkpointed) is one graph for torch.compile."""
    recipe = yaml.safe_load(Path(tiny_recipe).read_text())
    recipe["model"]["init_args"]["backbone"]["checkpointing"] = "all"
    path = tmp_path / "checkpointed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["bench", "--recipe", str(path), "--explain", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "checkpointing all" in figure(out, "setting")
    assert figure(out, "graphs") == "1" and figure(out, "graph breaks") == "0"


def test_loader_bench_reads_the_recipes_shards(tiny_recipe, tmp_path, capsys):
    shards = tmp_path / "pans"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "build",
            "--source",
            "camera-pans",
            "--out",
            str(shards),
            "--size",
            "16",
            "--clips-per-video",
            "1",
            "--workers",
            "1",
            "--split",
            "train",
            "-q",
        ],
        check=True,
    )
    recipe = yaml.safe_load(Path(tiny_recipe).read_text())
    recipe["data"]["init_args"].update(train_shards=f"{shards}/train-*.tar", num_workers=0)
    path = tmp_path / "loader.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["bench", "--recipe", str(path), "--what", "loader", "--steps", "2", "--loader-batches", "3"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 of uint8 4×16×16×3" in figure(out, "setting")
    assert float(figure(out, "dv clips/s").split()[0]) > 0 and figure(out, "skipped samples") == "0"


@pytest.mark.slow
def test_compile_bench_reports_a_setting_that_settles(tiny_recipe, tmp_path, capsys):
    """`dv bench --what compile`: per-layer regions traced (aot_eager) on the first step, nothing after, no breaks."""
    out_json = tmp_path / "compile.json"
    args = ["bench", "--recipe", tiny_recipe, "--what", "compile", "--compile-regions", "layers"]
    args += [
        "--compile-backend",
        "aot_eager",
        "--steps",
        "2",
        "--frames",
        "2",
        "--device",
        "cpu",
        "--json",
        str(out_json),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "batch 2 × 2 frames × 16×16" in out and "regions layers, backend aot_eager" in out
    figures = json.loads(out_json.read_text())
    first, second = figures["steps"]
    assert first["graphs"] > 0 and second["graphs"] == first["graphs"]
    assert figures["graphs_after_first_step"] == 0 and figures["graph_breaks"] == {}
    assert figures["eager_s"] > 0 and "eager s/step" in out, "the eager steps come first, on the same module"
    assert "graph breaks 0, graphs compiled after the first step 0" in out
