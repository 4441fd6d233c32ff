"""The ``harness`` fixture of the service tests that drive executions.

Submitting, reading and cancelling, watching, progress, running and
recovery (``submission_test.py`` keeps a harness of its own: services for
two cache environments).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from tests.support.app import make_config
from tests.support.runner_harness import Harness, build_harness


@pytest_asyncio.fixture
async def harness(
    tmp_path: Path, jupyter_server: Any, database_url: str
) -> AsyncIterator[Harness]:
    config = make_config(
        tmp_path,
        jupyter_server,
        database_url=database_url,
        kernel_names=["python3", "no-such-kernel"],
        max_attempts=2,
        # Cell events are written as soon as they are posted, which these
        # tests were written for; the gathering is tested in progress_test.py.
        progress_flush_seconds=0,
    )
    async with build_harness(config) as harness:
        yield harness
