"""Holding one bot identity for the life of a worker process.

A worker drives JupyterHub labs as a bot user.  :class:`IdentityLease`
claims a free identity from the configured pool, renews the lease in the
background while the worker lives, and releases it on a clean stop.  If a
renewal finds that another worker took the identity over (this one stalled
past its lease), the lease reports itself lost so the worker stops driving
that lab instead of sharing it.

A worker that starts while every identity is leased waits (bounded) rather
than failing at once: the usual cause is a worker that just crashed or is
being replaced, whose lease frees up within one lease period.

:class:`IdentityFollower` is what acts on a lost lease, for the life of
the worker: it has the hub backend surrender the lab at once and drive
the lab of the next identity leased.  It lives here, beside the lease it
watches, rather than in the factory, which only builds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import structlog

from ..jupyter.hub import HubLabBackend
from ..storage.database import Database

__all__ = [
    "IDENTITY_RETRY_SECONDS",
    "IdentityFollower",
    "IdentityLease",
    "NoIdentityAvailableError",
]

_logger = structlog.get_logger("noteburst.identity")

IDENTITY_RETRY_SECONDS = 5.0
"""Pause before trying again to lease an identity when none was free."""


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

    async def acquire(self, *, wait_seconds: float = 0.0) -> str:
        """Claim an identity and start renewing it.

        Parameters
        ----------
        wait_seconds
            How long to keep trying when every identity is held: the claim
            is retried every third of the lease (at most every second), so
            an identity released, or whose holder stopped renewing, is taken
            soon after.  0 tries once.

        Raises
        ------
        NoIdentityAvailableError
            Raised if every identity is still held by a live worker after
            ``wait_seconds``: the pool is smaller than the number of workers.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        interval = min(1.0, self._lease.total_seconds() / 3)
        waiting = False
        while (name := await self._claim()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoIdentityAvailableError(self._exhausted_message(wait_seconds))
            if not waiting:
                waiting = True
                _logger.warning(
                    "Every bot identity is leased; waiting for one",
                    identities=len(self._pool),
                    wait_seconds=wait_seconds,
                    holder=self._holder,
                )
            await asyncio.sleep(min(interval, remaining))
        self._name = name
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew_forever(name))
        _logger.info("Claimed bot identity", identity=name, holder=self._holder)
        return name

    async def _claim(self) -> str | None:
        now = datetime.now(UTC)
        async with self._db.transaction() as tx:
            return await tx.identities.claim(
                self._pool, holder=self._holder, now=now, lease_until=now + self._lease
            )

    def _exhausted_message(self, wait_seconds: float) -> str:
        waited = (
            f" (waited {wait_seconds:g} s for one to be released or to expire)"
            if wait_seconds > 0
            else ""
        )
        return (
            f"all {len(self._pool)} bot identities are held by live workers"
            f"{waited}; add names to NOTEBURST_HUB_IDENTITIES or run fewer "
            "workers (each worker process leases one identity)"
        )

    async def release(self) -> None:
        """Stop renewing and give the identity back (if still ours)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._name is not None and not self.lost.is_set():
            async with self._db.transaction() as tx:
                await tx.identities.release(self._name, holder=self._holder)
        self._name = None

    async def _renew_forever(self, name: str) -> None:
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._db.transaction() as tx:
                    kept = await tx.identities.renew(
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


class IdentityFollower:
    """Move a hub backend to another identity when its lease is taken over.

    Parameters
    ----------
    lease
        The worker's lease, already acquired.
    backend
        The backend driving the lab of the leased identity.
    wait_seconds
        How long each new lease may wait for a free identity.
    retry_seconds
        Pause before trying again when none became free.
    """

    def __init__(
        self,
        lease: IdentityLease,
        backend: HubLabBackend,
        *,
        wait_seconds: float,
        retry_seconds: float = IDENTITY_RETRY_SECONDS,
    ) -> None:
        self._lease = lease
        self._backend = backend
        self._wait_seconds = wait_seconds
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following, on the running loop, until :meth:`aclose`."""
        self._task = asyncio.create_task(self._follow(), name="identity-follower")

    async def aclose(self) -> None:
        """Stop following."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _follow(self) -> None:
        """Surrender a lab whose identity was taken over; lease another one."""
        lease, backend = self._lease, self._backend
        while True:
            await lease.lost.wait()
            backend.surrender_identity(
                f"another worker took over the lease on {backend.username}"
            )
            while True:
                try:
                    name = await lease.acquire(wait_seconds=self._wait_seconds)
                except NoIdentityAvailableError as exc:
                    # Executions meanwhile fail over (LAB_UNAVAILABLE is
                    # retried elsewhere); keep trying, acquire() bounds each
                    # wait.
                    _logger.error("No bot identity to drive labs as", error=str(exc))
                    await asyncio.sleep(self._retry_seconds)
                    continue
                backend.assume_identity(name)
                break
