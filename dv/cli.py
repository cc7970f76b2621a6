"""The `dv` command: Lightning's fit/validate/test/predict (LightningCLI, `--recipe FILE`) and dv's own commands."""

from __future__ import annotations

import argparse
import os
import re
import sys

from dv import __version__
from dv.errors import ConfigError, DVError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


RESUME_IF_EXISTS = "--resume-if-exists"
"""`dv fit` flag: resume the run folder's last checkpoint when there is one, else train from scratch."""


def _strategy_class(value: str) -> str | None:
    """The class path a `--trainer.strategy` value names: a dotted path, or dv's short name `dv_fsdp`; else None.

    Passed on as a class path, its init arguments can follow (`--trainer.strategy.sharding_strategy=...`); a
    registry name cannot take them.
    """
    if value == "dv_fsdp":
        return "dv.strategies.DVFSDPStrategy"
    return value if "." in value else None


def _recipe_to_config(args: list[str]) -> list[str]:
    """LightningCLI names its YAML `--config` and checkpoint `--ckpt_path`; dv also says `--recipe` and `--ckpt`.

    Checkpoints load with weights_only=True unless asked otherwise. A strategy given as a class path,
    `--trainer.strategy=dv.strategies.DVFSDPStrategy`, or as `dv_fsdp`, is passed on as
    `--trainer.strategy.class_path=...`: given as a plain value, LightningCLI takes it for a registry name
    and lower-cases it, and a registry name takes no `--trainer.strategy.sharding_strategy=...`.
    """
    out = []
    args = list(args)
    while args:
        a = args.pop(0)
        if a == "--recipe":
            out.append("--config")
        elif a.startswith("--recipe="):
            out.append("--config=" + a.split("=", 1)[1])
        elif a == "--ckpt":
            out.append("--ckpt_path")
        elif a.startswith("--ckpt="):
            out.append("--ckpt_path=" + a.split("=", 1)[1])
        elif a == "--trainer.strategy" and args and _strategy_class(args[0]):
            out.append("--trainer.strategy.class_path=" + _strategy_class(args.pop(0)))
        elif a.startswith("--trainer.strategy=") and _strategy_class(a.split("=", 1)[1]):
            out.append("--trainer.strategy.class_path=" + _strategy_class(a.split("=", 1)[1]))
        else:
            out.append(a)
    if not any(a.startswith("--weights_only") for a in out) and not any(a in ("-h", "--help") for a in out):
        out.insert(1, "--weights_only=true")
    return out


def run_lightning(args: list[str]) -> None:
    """Hand the command to LightningCLI (dv's DVLightningCLI) with dv's defaults; its parse errors are ConfigErrors."""
    import lightning as L

    import dv.strategies  # noqa: F401 - registers the `dv_fsdp` strategy name
    from dv.lightning_cli import DVLightningCLI, argument_error_line
    from dv.quiet import quiet_lightning

    resume_if_exists = RESUME_IF_EXISTS in args
    if resume_if_exists and args[0] != "fit":
        raise ConfigError(f"{RESUME_IF_EXISTS} is a `dv fit` flag")
    args = [a for a in args if a != RESUME_IF_EXISTS]
    quiet_lightning()
    # exit_on_error=False: a bad key or value raises instead of printing the whole usage; dv prints one line.
    strict = {"exit_on_error": False}
    try:
        DVLightningCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=_recipe_to_config(args),
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "dv", **strict, **{name: dict(strict) for name in LIGHTNING_COMMANDS}},
            resume_if_exists=resume_if_exists,
        )
    except argparse.ArgumentError as e:
        raise ConfigError(f"{argument_error_line(str(e))} (see `dv {args[0]} --help`)") from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of dv's own commands (the Lightning ones are parsed by LightningCLI)."""
    parser = argparse.ArgumentParser(
        prog="dv",
        description="Train, sample and evaluate DreamVideo-style image-to-video diffusion models.",
        epilog="Lightning commands: dv {fit,validate,test,predict} --recipe FILE [--trainer.max_steps=N ...] "
        "(see `dv fit --help`).",
    )
    parser.add_argument("--version", action="version", version=f"dv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"Lightning {name} of a recipe (dv {name} --recipe FILE)", add_help=False)
    info = sub.add_parser("info", help="parameter counts of a recipe's model, built on the meta device")
    info.add_argument("--recipe", required=True)
    from dv.sample import add_arguments as sample_arguments

    sample_arguments(sub.add_parser("sample", help="sample a video from a checkpoint, an image and prompts"))
    from dv.app import add_arguments as app_arguments

    app_arguments(sub.add_parser("app", help="a browser page over a checkpoint (Gradio; pip install -e '.[app]')"))
    from dv.bench.cli import add_arguments as bench_arguments

    bench_arguments(sub.add_parser("bench", help="s/step, clips/s, memory, FLOPs and MFU of a recipe, and the plain loop's"))
    export = sub.add_parser("export", help="write a checkpoint's trained weights to one safetensors file")
    export.add_argument("--recipe", required=True)
    export.add_argument("--ckpt", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--no-ema", action="store_true", help="export the raw weights even when an EMA was kept")
    from dv.cache import add_arguments as cache_arguments

    cache_arguments(sub.add_parser("cache-latents", help="encode video shards once with a recipe's frozen VAE into latent shards"))
    return parser


def dispatch(argv: list[str]) -> None:
    """Run one dv command."""
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return
    if args.command == "info":
        from dv import info

        info.run(args.recipe)
    elif args.command == "sample":
        from dv.sample import run as sample

        sample(args)
    elif args.command == "app":
        from dv.app import run as app

        app(args)
    elif args.command == "bench":
        from dv.bench.cli import run as bench

        bench(args)
    elif args.command == "export":
        from dv.lit.export import export_checkpoint

        path = export_checkpoint(args.recipe, args.ckpt, args.out, use_ema=not args.no_ema)
        print(f"wrote {path}")
    elif args.command == "cache-latents":
        from dv.cache import run as cache_latents

        cache_latents(args)


def error_line(error: BaseException) -> str:
    """A DVError's one line; a DataLoader worker re-raises it with the worker's traceback, whose last line is it."""
    text = str(error).strip()
    if "\n" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1].strip())
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dv` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    # Denormal floats make CPU kernels up to 15x slower on small diffusion models (measured on the demo recipe).
    torch.set_flush_denormal(True)
    try:
        dispatch(list(sys.argv[1:] if argv is None else argv))
    except DVError as e:
        print(f"dv: error: {error_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.filename is None and e.strerror is None:
            raise
        # A file that cannot be read or written (a missing folder, a path through a file, a full disk): its
        # name and the reason say what to fix; the traceback would not.
        where = f": {e.filename!r}" if e.filename is not None else ""
        print(f"dv: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dv: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
