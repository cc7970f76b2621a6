"""`python -m dv.claims`: the old form of `dv claims`, kept for one release (it says so on stderr)."""

from __future__ import annotations

import sys

from dv.cli import main as dv_main
from dv.cli import run_old_form


def main(argv: list[str] | None = None) -> int:
    """`dv claims` with these arguments; returns the exit code."""
    return dv_main(["claims", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run_old_form("python -m dv.claims"))
