"""What every test leaves as it found it: the environment, and no default process group.

An in-process `dv fit` under a distributed strategy (the docs' FSDP line on one CPU process) initialises torch's
default process group and sets MASTER_ADDR/MASTER_PORT, and Lightning's teardown keeps both. A later test would then
fork children that inherit the group ("initialize the default process group twice"), or start `dv fit` processes
that read the stale MASTER_PORT, still bound by this process (EADDRINUSE).
"""

from __future__ import annotations

import os

import pytest
import torch.distributed


@pytest.fixture(autouse=True)
def _restore_process_state():
    environ = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)
