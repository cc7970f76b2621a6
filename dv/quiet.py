"""quiet_lightning(): silence the Lightning messages that are known and intended in dv runs; keep every other warning."""

from __future__ import annotations

import logging
import re
import warnings

_KNOWN_WARNINGS = (
    # dv's modules keep their frozen autoencoder and text encoder in eval mode on purpose (T2VModule.train),
    # so every dv run has them: the count says nothing about a real problem.
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # `dv fit` hands its command line to LightningCLI as `args` by design.
    r"LightningCLI's args parameter is intended to run from within Python",
    # dv refuses a fresh run into a folder that holds one (DVLightningCLI); what is left is a resume, into its own folder.
    r"Checkpoint directory .* exists and is not empty",
    # Lightning's own use of a torch API the installed torch deprecates: nothing a dv user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class _DropTips(logging.Filter):
    """Drop Lightning's advertisements ("💡 Tip: ... litlogger / litmodels"): they are about services, not the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("💡 Tip:")


class _DropZeroFlops(logging.Filter):
    """Remove the "0  Total Flops" line of the model summary: dv modules declare no example input, so Lightning
    counts no FLOPs and prints 0 (dv bench measures them); the rest of the summary stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "Total Flops" in record.msg:
            record.msg = re.sub(r"\n\s*0\s+Total Flops", "", record.msg)
        return True


def _summary_without_zero_flops(summarize):
    """RichModelSummary.summarize, less its "Total FLOPs: 0" line (see _DropZeroFlops for why)."""

    def wrapped(*args, **kwargs):
        flops = kwargs.get("total_flops", args[5] if len(args) > 5 else None)
        if flops != 0:
            return summarize(*args, **kwargs)
        from rich import get_console

        console = get_console()
        with console.capture() as captured:
            summarize(*args, **kwargs)
        lines = captured.get().splitlines(keepends=True)
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        console.file.write(
            "".join(line for line in lines if not re.match(r"\s*Total FLOPs: 0\s*$", ansi.sub("", line)))
        )

    wrapped.dv_quiet = True
    return wrapped


def quiet_lightning() -> None:
    """Install the filters above (idempotent). The first run's "no last checkpoint" message never comes: dv
    resolves `--ckpt_path last` itself (DVLightningCLI), an error or, with --resume-if-exists, a fresh start."""
    for pattern in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    from lightning.pytorch.callbacks import RichModelSummary

    if not getattr(RichModelSummary.summarize, "dv_quiet", False):
        RichModelSummary.summarize = staticmethod(_summary_without_zero_flops(RichModelSummary.summarize))
    summary = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    if not any(isinstance(f, _DropZeroFlops) for f in summary.filters):
        summary.addFilter(_DropZeroFlops())
