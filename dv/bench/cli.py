"""`dv bench`: one recipe's speed figures, dv beside the plainest diffusers + torch loop doing the same work.

dv bench --recipe FILE [--what train|sample|loader|memory|compile] [--steps N] [--batch-size B] [--explain] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from pathlib import Path

import torch

from dv.bench import plain
from dv.bench.compile import compile_lines, compile_steps
from dv.bench.device import cpu_name, device_name, peak_memory, reset_peak_memory
from dv.bench.dvpath import fit_times, loss_and_backward, sampler_call, what_dv_adds
from dv.bench.explain import explain_denoiser, explain_lines
from dv.bench.flops import count_flops, mfu, peak_bf16_flops
from dv.bench.loader import recipe_loader
from dv.bench.memory import GIB, estimate
from dv.bench.workload import build_workload, meta_workload
from dv.errors import ConfigError
from dv.models.speed import COMPILE_BACKENDS, COMPILE_REGIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv bench`."""
    parser.add_argument("--recipe", required=True, help="the recipe whose model, batch and precision are measured")
    parser.add_argument(
        "--what",
        choices=("train", "sample", "loader", "memory", "compile"),
        default="train",
        help="a training step, sampling one batch of videos, the data loader, an estimate of a "
        "training step's memory per activation-checkpointing choice (meta device, no compute), or the first "
        "--steps training steps compiled, after --warmup eager ones (eager s/step, compile time, graphs, graph breaks, "
        "recompiles)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=10,
        help="timed repetitions (training steps, videos, loader epochs); the median is reported",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (compilation, allocator)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (default: the recipe's)")
    parser.add_argument(
        "--frames", type=int, default=None, help="frames per clip of train, sample and compile (default: the recipe's)"
    )
    parser.add_argument(
        "--frame-size",
        type=int,
        default=None,
        help="clip side in pixels of train, sample and compile (default: the recipe's)",
    )
    parser.add_argument(
        "--compile-regions",
        choices=COMPILE_REGIONS,
        default=None,
        help="--what compile: the whole networks or each repeated layer (default: the recipe's)",
    )
    parser.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default=None,
        help="--what compile: inductor, or aot_eager to trace without generating code (default: the recipe's)",
    )
    parser.add_argument("--ddim-steps", type=int, default=50, help="denoising steps per video (--what sample)")
    parser.add_argument("--loader-batches", type=int, default=20, help="batches per timed loader epoch (--what loader)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda, cuda:N or cpu (default: cuda when torch sees one)",
    )
    parser.add_argument("--no-plain", action="store_true", help="skip the plain loop (and the ratio)")
    parser.add_argument(
        "--latents",
        action="store_true",
        help="train from a latent batch (as from `dv cache-latents --text` shards): no VAE or text encoder in the step",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="convolution weights in channels-last layout (both loops)"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark = True, as a recipe's trainer.benchmark: true (both loops)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="instead of timing: torch._dynamo.explain of the denoiser (graphs, graph breaks, reasons)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")


def _median(times: list[float]) -> float:
    return statistics.median(times) if times else float("nan")


def _memory(work) -> tuple[float, str]:
    n, what = peak_memory(work.device)
    return n / GIB, what


def bench_train(work, args) -> dict:
    """dv's Lightning training step and the plain loop's: s/step, clips/s, peak memory; FLOPs and MFU."""
    work.module.train()
    # One eager loss + backward without checkpointing's recomputation: the model FLOPs of a step (the
    # optimizer's elementwise work is not counted, as usual for MFU). Counted on one clip and multiplied:
    # every part works per clip, and without recomputation a full-size batch's activations do not fit
    # (DreamVideo at batch 8 ran out of an H100's 80 GB here).
    flops = count_flops(loss_and_backward(work, clips=1)) * work.batch_size
    result: dict = {"dv_adds": what_dv_adds(work), "flops_per_step": flops}
    if not args.no_plain:
        step = plain.train_step(work)
        reset_peak_memory(work.device)
        times = plain.time_calls(step, work.device, args.warmup, args.steps)
        result["plain"] = {"times": times, "peak_memory_gib": _memory(work)[0]}
        del step  # and with it the plain loop's optimizer state
        gc.collect()
        if work.device.type == "cuda":
            torch.cuda.empty_cache()
    reset_peak_memory(work.device)
    times = fit_times(work, args.warmup, args.steps)
    memory, what = _memory(work)
    result["dv"] = {"times": times, "peak_memory_gib": memory, "path": "Lightning Trainer.fit"}
    result["memory_measure"] = what
    return result


def bench_sample(work, args) -> dict:
    """dv's VideoSampler (Eq. 5 as one batched call) and a plain DDIM loop (three calls): s/video, clips/s."""
    work.module.eval()
    s_text, s_image = 9.0, 1.5
    run = sampler_call(work, args.ddim_steps, s_text, s_image)
    result: dict = {"ddim_steps": args.ddim_steps, "flops_per_step": count_flops(run)}  # per video, the "step" here
    if not args.no_plain:
        plain_run = plain.sample_video(work, args.ddim_steps, s_text, s_image)
        reset_peak_memory(work.device)
        result["plain"] = {
            "times": plain.time_calls(plain_run, work.device, args.warmup, args.steps),
            "peak_memory_gib": _memory(work)[0],
        }
    reset_peak_memory(work.device)
    times = plain.time_calls(run, work.device, args.warmup, args.steps)
    memory, what = _memory(work)
    result["dv"] = {"times": times, "peak_memory_gib": memory, "path": "VideoSampler.sample"}
    result["memory_measure"] = what
    return result


def report(work, args, result: dict) -> dict:
    """Print the figures and return them as one JSON-friendly dict."""
    unit = {"train": "step", "sample": "video"}[args.what]
    peak = peak_bf16_flops(work.device)
    figures: dict = {
        "what": args.what,
        "recipe": args.recipe,
        "model": type(work.module).__name__,
        "device": device_name(work.device),
        "setting": work.describe(),
        "batch_size": work.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "flops_per_step": result.get("flops_per_step"),
        "peak_flops": peak,
        "memory_measure": result["memory_measure"],
    }
    print(f"dv bench · {args.what} · {args.recipe} ({figures['model']}, random weights, synthetic batch)")
    print(f"device            {figures['device']}")
    print(
        f"setting           {figures['setting']}"
        + (f", {args.ddim_steps} DDIM steps per video" if args.what == "sample" else "")
    )
    flops = result.get("flops_per_step")
    for name in ("dv", "plain"):
        if name not in result:
            continue
        r = result[name]
        seconds = _median(r["times"])
        label = r.get("path", "plain diffusers + torch loop")
        figures[name] = {
            "seconds_per_step": seconds,
            "clips_per_s": work.batch_size / seconds,
            "times": r["times"],
            "peak_memory_gib": r["peak_memory_gib"],
            "path": label,
            "tflops_per_s": flops / seconds / 1e12 if flops else None,
            "mfu": mfu(flops, seconds, peak) if flops else None,
        }
        f = figures[name]
        print(
            f"{name + ' s/' + unit:<18}{seconds:.4f} (median of {len(r['times'])} after {args.warmup} warm-up; {label})"
        )
        if args.what == "sample":
            print(f"{name + ' s/DDIM step':<18}{seconds / args.ddim_steps:.5f}")
        print(f"{name + ' clips/s':<18}{f['clips_per_s']:.3f}")
        print(f"{name + ' peak memory':<18}{f['peak_memory_gib']:.2f} GiB ({result['memory_measure']})")
    if "dv" in figures and "plain" in figures:
        ratio = figures["dv"]["seconds_per_step"] / figures["plain"]["seconds_per_step"]
        figures["ratio_dv_to_plain"] = ratio
        print(f"{'dv / plain time':<18}{ratio:.2f}× (throughput {1 / ratio:.2f}×)")
        if result.get("dv_adds"):
            print(f"{'dv also does':<18}{'; '.join(result['dv_adds'])}")
    if "plain" not in result:
        print(f"{'plain':<18}not run (--no-plain)")
    print(f"{'FLOPs/' + unit:<18}{flops:.4g} (torch.utils.flop_counter, one eager {unit} without recomputation)")
    if peak is None:
        print(f"{'MFU':<18}no MFU ({'CPU' if work.device.type == 'cpu' else 'GPU not in the peak table'})")
    else:
        print(
            f"{'MFU':<18}"
            + ", ".join(f"{n} {100 * figures[n]['mfu']:.1f}%" for n in ("dv", "plain") if n in figures)
            + f" of {peak / 1e12:.1f} TFLOP/s dense bf16"
        )
    return figures


def run_loader(args) -> dict:
    """Clips/s of the recipe's VideoDataModule."""
    r = recipe_loader(args.recipe, args.batch_size, args.loader_batches, args.steps)
    b = r["shape"][0]
    print(f"dv bench · loader · {args.recipe} (VideoDataModule, {r['workers']} workers)")
    print(f"device            CPU: {cpu_name()}")
    print(
        f"setting           batch {b} of {r.get('kind', 'uint8')} {'×'.join(map(str, r['shape'][1:]))}, {args.loader_batches} batches per epoch"
    )
    print(
        f"{'dv clips/s':<18}{r['clips_per_s']:.2f} (median of {len(r['rates'])} epochs after a warm-up epoch of {r['warmup_s']:.1f} s)"
    )
    print(f"{'dv s/step':<18}{b / r['clips_per_s']:.4f} (per batch)")
    print(f"{'skipped samples':<18}{r['skipped']}")
    return {
        "what": "loader",
        "recipe": args.recipe,
        "device": f"CPU: {cpu_name()}",
        "dv": {"clips_per_s": r["clips_per_s"], "seconds_per_step": b / r["clips_per_s"], "rates": r["rates"]},
        "warmup_s": r["warmup_s"],
        "batch_shape": list(r["shape"]),
        "skipped": r["skipped"],
    }


def run_explain(args) -> dict:
    """Print torch._dynamo.explain of the recipe's denoiser (eager modules: the recipe's compile switch is ignored)."""
    work = build_workload(args.recipe, args.batch_size, args.device, compile=False)
    out = explain_denoiser(work)
    print(f"dv bench --explain · {args.recipe} ({type(work.module).__name__}): torch._dynamo.explain of the denoiser")
    print(f"setting           {work.describe()}")
    for line in explain_lines(out):
        print(line)
    return {
        "what": "explain",
        "recipe": args.recipe,
        "graph_count": out.graph_count,
        "graph_break_count": out.graph_break_count,
        "break_reasons": [r.reason for r in out.break_reasons],
    }


def run_memory(args) -> dict:
    """Print the meta-device memory estimate of a training step per checkpointing choice."""
    module, frames, size, batch, bf16 = meta_workload(args.recipe, args.batch_size)
    rows = estimate(module, batch, frames, size, bf16)
    recipe_choice = module.backbone_config.checkpointing
    print(
        f"dv bench · memory · {args.recipe} ({type(module).__name__}): one training step, estimated on the meta device"
    )
    print(
        f"setting           batch {batch} × {frames} frames × {size}×{size}, {'bf16-mixed' if bf16 else 'fp32'}; "
        f"the recipe checkpoints: {recipe_choice}"
    )
    print(
        f"{'checkpointing':<15}{'activations':>12}{'weights':>10}{'grads':>10}{'optimizer':>10}{'bf16 copies':>12}{'total':>10}  GiB"
    )
    for r in rows:
        print(
            f"{r.choice:<15}{r.activations / GIB:>12.2f}{r.weights / GIB:>10.2f}{r.gradients / GIB:>10.2f}"
            f"{r.optimizer / GIB:>10.2f}{r.autocast_copies / GIB:>12.2f}{r.total / GIB:>10.2f}"
        )
    print(
        "(a floor: saved tensors counted exactly, plus the largest checkpointed block's recomputation; "
        "no allocator overhead or gradients in flight)"
    )
    return {
        "what": "memory",
        "recipe": args.recipe,
        "batch_size": batch,
        "frames": frames,
        "size": size,
        "bf16": bf16,
        "measure": "meta-device count of tensors saved for backward",
        "choices": {
            r.choice: {
                "activations": r.activations,
                "weights": r.weights,
                "gradients": r.gradients,
                "optimizer": r.optimizer,
                "autocast_copies": r.autocast_copies,
                "total": r.total,
            }
            for r in rows
        },
    }


def run_compile(args) -> dict:
    """--what compile: the recipe's model compiled (its regions and backend, or the flags'), its first steps."""
    overrides = {"compile_regions": args.compile_regions, "compile_backend": args.compile_backend}
    work = build_workload(
        args.recipe,
        args.batch_size,
        args.device,
        compile=False,  # compiled in place after the eager steps
        latents=getattr(args, "latents", False),
        backbone={k: v for k, v in overrides.items() if v is not None},
        video_shape=(args.frames, args.frame_size),
    )
    work.module.backbone_config.compile = True
    result = compile_steps(work, args.steps, eager_steps=args.warmup)
    print("\n".join(compile_lines(work, result)))
    cfg = work.module.backbone_config
    return {
        "what": "compile",
        "recipe": args.recipe,
        "setting": work.describe(),
        "compile_regions": cfg.compile_regions,
        "compile_backend": cfg.compile_backend,
        **result,
    }


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark the flags ask for, print it, and write --json; returns the figures."""
    for name in ("steps", "ddim_steps", "loader_batches"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, not {args.warmup}")
    if args.explain:
        figures = run_explain(args)
    elif args.what == "loader":
        figures = run_loader(args)
    elif args.what == "memory":
        figures = run_memory(args)
    elif args.what == "compile":
        figures = run_compile(args)
    else:
        if getattr(args, "cudnn_benchmark", False):
            torch.backends.cudnn.benchmark = True
        work = build_workload(
            args.recipe,
            args.batch_size,
            args.device,
            latents=getattr(args, "latents", False),
            channels_last=getattr(args, "channels_last", False),
            video_shape=(args.frames, args.frame_size),
        )
        result = bench_train(work, args) if args.what == "train" else bench_sample(work, args)
        figures = report(work, args, result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return figures
