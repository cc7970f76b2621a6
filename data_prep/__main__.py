"""`python -m data_prep build ...` and `python -m data_prep stats ...`: the old forms of `dv shards` and
`dv shard-stats`, kept for one release (run as a command, they say so on stderr)."""

from __future__ import annotations

import sys

from data_prep.cli import make_parser, run
from dv.cli import deprecation_line, run_guarded


def main(argv: list[str] | None = None) -> int:
    """Parse and run; a DVError is one line on stderr (dv.cli.run_guarded, as `data_prep`) and exit code 2."""
    return run_guarded(lambda: run(make_parser().parse_args(argv)), prog="data_prep")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if f"python -m data_prep {command}" in ("python -m data_prep build", "python -m data_prep stats"):
        print(deprecation_line(f"python -m data_prep {command}"), file=sys.stderr)
    sys.exit(main())
