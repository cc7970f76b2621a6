"""The `dv` command: Lightning's fit/validate/test/predict (LightningCLI, `--recipe FILE`) and dv's own commands.

Every dv command is a subcommand here, and this is the one place that turns a DVError into its one line on
stderr (`run_guarded`); the old `python -m ...` forms of the commands call it too, after a deprecation line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import sys
from collections.abc import Callable

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
    # Lightning and the modules built on it are imported only by the commands that train, so `dv shards` and
    # `dv --help` start without them.
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


COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("dv.info", "parameter counts of a recipe's model, built on the meta device"),
    "export": ("dv.lit.export", "write a checkpoint's trained weights to one safetensors file"),
    "sample": ("dv.sample", "sample a video from a checkpoint, an image and prompts"),
    "app": ("dv.app", "a browser page over a checkpoint (Gradio; pip install -e '.[app]')"),
    "bench": ("dv.bench.cli", "s/step, clips/s, memory, FLOPs and MFU of a recipe, and the plain loop's"),
    "cache-latents": ("dv.cache", "encode video shards once with a recipe's frozen VAE into latent shards"),
    "shards": ("data_prep.cli", "build video shards from a source (was: python -m data_prep build)"),
    "shard-stats": ("data_prep.stats", "score distributions of built shards (was: python -m data_prep stats)"),
    "check-data": ("dv.check_data", "stream one batch of shards and print what it holds"),
    "claims": ("dv.claims.command", "sample trained models on the held-out photos: the claims tables and figure"),
    "probe-captions": ("dv.claims.captions", "does a model read the motion caption? its loss under each caption"),
    "card": ("dv.claims.card", "the figures of a model card, for one model in one setting"),
    "trajectory": ("dv.trajectory", "where along the DDIM trajectory a trained model loses held-out clips"),
}
"""dv's own commands: name -> (module with add_arguments(parser) and run(args), help). Imported when used."""

OLD_FORMS = {
    "python -m dv.claims": "dv claims",
    "python -m dv.claims.captions": "dv probe-captions",
    "python -m dv.claims.card": "dv card",
    "python -m dv.diffusion.trajectory": "dv trajectory",
    "python -m dv.data.datamodule": "dv check-data",
    "python -m data_prep build": "dv shards",
    "python -m data_prep stats": "dv shard-stats",
}
"""The command lines that moved, kept for one release: old form -> new form."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of dv's own commands (the Lightning ones are parsed by LightningCLI).

    Only `command`'s module is imported for its flags (None: every command's), so `dv X` loads what X needs.
    """
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
    for name, (module, help_text) in COMMANDS.items():
        parser_of_name = sub.add_parser(name, help=help_text, prog=f"dv {name}")
        if command in (None, name):
            importlib.import_module(module).add_arguments(parser_of_name)
    return parser


def dispatch(argv: list[str]) -> int | None:
    """Run one dv command; returns its exit code (None: 0)."""
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "")
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["dv", *argv])  # what the command's report says it ran
    if args.command is None:
        parser.print_help()
        return None
    result = importlib.import_module(COMMANDS[args.command][0]).run(args)
    return result if type(result) is int else None  # other results (summaries, paths) are not exit codes


def error_line(error: BaseException) -> str:
    """A DVError's one line; a DataLoader worker re-raises it with the worker's traceback, whose last line is it."""
    text = str(error).strip()
    if "\n" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1].strip())
    return text


def run_guarded(command: Callable[[], int | None], prog: str = "dv") -> int:
    """Run a command and return its exit code; a DVError, or a file that cannot be read or written, is one line on
    stderr (`PROG: error: ...`) and exit code 2, an interrupt exit code 130. Every dv command line goes through here."""
    try:
        return command() or 0
    except DVError as e:
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.filename is None and e.strerror is None:
            raise
        # A file that cannot be read or written (a missing folder, a path through a file, a full disk): its
        # name and the reason say what to fix; the traceback would not.
        where = f": {e.filename!r}" if e.filename is not None else ""
        print(f"{prog}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dv` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    # Denormal floats make CPU kernels up to 15x slower on small diffusion models (measured on the demo recipe).
    torch.set_flush_denormal(True)
    return run_guarded(lambda: dispatch(list(sys.argv[1:] if argv is None else argv)))


def deprecation_line(old: str) -> str:
    """What an old command form prints on stderr before it runs: its new form."""
    return f"{old} is deprecated and goes in the next release; use `{OLD_FORMS[old]}`"


def run_old_form(old: str, argv: list[str] | None = None) -> int:
    """Run a moved command by its old form (`python -m dv.claims ...`): the deprecation line, then the new form."""
    print(deprecation_line(old), file=sys.stderr)
    return main([*OLD_FORMS[old].split()[1:], *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
