"""`python -m dv` is the `dv` command."""

import sys

from dv.cli import main

sys.exit(main())
