"""Retention: purge finished executions once they are older than the retention.

Without it the database grows with every submission: each execution keeps
both notebooks, its events (a chatty notebook writes thousands), its HTML
renderings and its webhook attempts.  Every worker process runs
:meth:`RetentionService.purge` every few minutes (see
:mod:`noteburst.worker.runtime`), and an operator can run it by hand with
``noteburst db purge``.

A purge deletes executions that finished more than ``retention.days`` ago
(``NOTEBURST_RETENTION_DAYS``; 0 keeps everything), a batch of
``retention.batch_size`` at a time, oldest first, each batch in its own
transaction, pausing briefly between batches.  So the locks it takes last
one short batch: on PostgreSQL row locks on the batch's rows only (which
nothing else writes once an execution is finished); on SQLite the write
lock, which every writer waits for, and the pause lets a waiting writer
in between two batches.  What exactly is purgeable (never a queued or
running execution, never one whose webhook is still owed; a run's
followers with it) is :mod:`noteburst.storage.executions.retention`'s.

The result cache (:mod:`noteburst.domain.cache`) keeps no results of its
own: a cached result is a successful execution, reused while it exists.
Retention purges it like any other, so a result is reused for at most the
retention period, whatever ``maxAgeSeconds`` a submission accepts (the
cache promises a result no *older* than that, never that one is kept).  A
submission that finds its result purged runs the notebook again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from ..config import RetentionSettings
from ..storage.database import Database
from ..storage.executions import PurgeCandidate, PurgedCounts

__all__ = ["BATCH_PAUSE_SECONDS", "PurgeReport", "RetentionService"]

_logger = structlog.get_logger("noteburst.retention")

BATCH_PAUSE_SECONDS = 0.05
"""Pause between two batches of a purge.

On SQLite a writer that finds the write lock held retries with a backoff
of up to 20 ms (:mod:`noteburst.storage.sqlite_driver`); a pause longer
than that lets one waiting writer (a submission, a worker's progress) in
between two batches instead of behind the whole purge.
"""


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one purge did (or, in a dry run, would do)."""

    cutoff: datetime | None
    """Executions that finished before this were purged; None: retention
    is off (or nothing can be that old) and nothing was looked at."""
    removed: PurgedCounts
    """Rows deleted (dry run: rows that would be)."""
    batches: int
    """Transactions that found something to purge."""
    longest_batch_seconds: float
    """Longest of those transactions, commit included: the longest any
    lock of the purge was held."""
    dry_run: bool


class RetentionService:
    """Purge old finished executions in small batches.

    Parameters
    ----------
    database
        Where executions live.
    settings
        ``config.retention``: the age and the batch size.
    pause_seconds
        Pause between batches (see :data:`BATCH_PAUSE_SECONDS`).
    """

    def __init__(
        self,
        *,
        database: Database,
        settings: RetentionSettings,
        pause_seconds: float = BATCH_PAUSE_SECONDS,
    ) -> None:
        self._db = database
        self._settings = settings
        self._pause = pause_seconds

    @property
    def enabled(self) -> bool:
        """Whether the configured retention purges anything (days > 0)."""
        return self._settings.days > 0

    async def purge(
        self,
        *,
        older_than: timedelta | None = None,
        batch_size: int | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PurgeReport:
        """Delete executions that finished longer ago than the retention.

        Parameters
        ----------
        older_than
            Age to purge from instead of the configured days (must be
            positive); None: the configuration's, and nothing if it is 0.
        batch_size
            Executions per transaction instead of the configured size.
        dry_run
            Count what would be deleted, delete nothing.
        now
            The current time (timezone-aware); default: the clock.

        Returns
        -------
        PurgeReport
            What was deleted (or would be).

        Raises
        ------
        ValueError
            ``older_than`` is not positive, or ``batch_size`` is below 1.
        """
        if older_than is None:
            if not self.enabled:
                return _nothing(dry_run=dry_run)
            older_than = timedelta(days=self._settings.days)
        elif older_than <= timedelta(0):
            msg = f"older_than must be positive, not {older_than}"
            raise ValueError(msg)
        size = self._settings.batch_size if batch_size is None else batch_size
        if size < 1:
            msg = f"batch_size must be at least 1, not {size}"
            raise ValueError(msg)
        try:
            cutoff = (now or datetime.now(UTC)) - older_than
        except OverflowError:
            return _nothing(dry_run=dry_run)  # before year 1: nothing is
        removed = PurgedCounts()
        batches = 0
        longest = 0.0
        after: PurgeCandidate | None = None
        while True:
            started = time.monotonic()
            async with self._db.transaction() as tx:
                found = await tx.retention.candidates(
                    finished_before=cutoff, limit=size, after=after
                )
                ids = [candidate.execution_id for candidate in found]
                if dry_run:
                    counts = await tx.retention.count(ids)
                else:
                    counts = await tx.retention.purge(ids, finished_before=cutoff)
            if not found:
                break
            batches += 1
            longest = max(longest, time.monotonic() - started)
            removed += counts
            if len(found) < size:
                break  # none left after these
            after = found[-1]
            await asyncio.sleep(self._pause)
        if removed.executions and not dry_run:
            _logger.info(
                "Purged old executions",
                cutoff=cutoff.isoformat(),
                executions=removed.executions,
                events=removed.events,
                renderings=removed.renderings,
                batches=batches,
                longest_batch_seconds=round(longest, 3),
            )
        return PurgeReport(
            cutoff=cutoff,
            removed=removed,
            batches=batches,
            longest_batch_seconds=longest,
            dry_run=dry_run,
        )


def _nothing(*, dry_run: bool) -> PurgeReport:
    return PurgeReport(
        cutoff=None,
        removed=PurgedCounts(),
        batches=0,
        longest_batch_seconds=0.0,
        dry_run=dry_run,
    )
