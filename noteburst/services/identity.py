"""Holding one bot identity for the life of a worker process.

A worker drives JupyterHub labs as a bot user.  :class:`IdentityLease`
claims a free identity from the configured pool, renews the lease in the
background while the worker lives, and releases it on a clean stop.  If a
renewal finds that another worker took the identity over (this one stalled
past its lease), the lease reports itself lost so the worker stops driving
that lab instead of sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog

from ..storage.database import Database

__all__ = ["IdentityLease", "NoIdentityAvailableError"]

_logger = structlog.get_logger("noteburst.identity")


class NoIdentityAvailableError(Exception):
    """Every identity in the pool is held by a live worker."""


class IdentityLease:
    """Claim, keep and release one identity from a pool.

    Parameters
    ----------
    database
        Where leases are kept (the database every worker shares).
    pool
        Identity names, in order of preference.
    holder
        A name unique to this worker process (host, pid, random suffix).
    lease_seconds
        How long a lease lasts without renewal; renewed every third of it.
    """

    def __init__(
        self,
        *,
        database: Database,
        pool: Sequence[str],
        holder: str,
        lease_seconds: float,
    ) -> None:
        self._db = database
        self._pool = list(pool)
        self._holder = holder
        self._lease = timedelta(seconds=lease_seconds)
        self._name: str | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        """Set when the identity was taken over by another worker."""

    @property
    def name(self) -> str:
        """The identity held; only valid after :meth:`acquire`."""
        if self._name is None:
            msg = "no identity acquired"
            raise RuntimeError(msg)
        return self._name

    async def acquire(self) -> str:
        """Claim an identity and start renewing it.

        Raises
        ------
        NoIdentityAvailableError
            Raised if every identity is held by a live worker: the pool is
            smaller than the number of workers.
        """
        now = datetime.now(UTC)
        async with self._db.lease_transaction() as leases:
            name = await leases.claim(
                self._pool, holder=self._holder, now=now, lease_until=now + self._lease
            )
        if name is None:
            msg = (
                f"all {len(self._pool)} bot identities are held by live workers; "
                "add identities to the pool or run fewer workers"
            )
            raise NoIdentityAvailableError(msg)
        self._name = name
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew_forever(name))
        _logger.info("Claimed bot identity", identity=name, holder=self._holder)
        return name

    async def release(self) -> None:
        """Stop renewing and give the identity back (if still ours)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._name is not None and not self.lost.is_set():
            async with self._db.lease_transaction() as leases:
                await leases.release(self._name, holder=self._holder)
        self._name = None

    async def _renew_forever(self, name: str) -> None:
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._db.lease_transaction() as leases:
                    kept = await leases.renew(
                        name,
                        holder=self._holder,
                        lease_until=datetime.now(UTC) + self._lease,
                    )
            except Exception:
                _logger.warning("Identity lease renewal failed", identity=name)
                continue
            if not kept:
                _logger.error("Bot identity was taken over", identity=name)
                self.lost.set()
                return
