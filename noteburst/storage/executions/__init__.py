"""The execution store, one module per responsibility.

Every part is bound to the session of one transaction and reached through
the unit of work (``Database.transaction()``), which names each:

=================  ==========================  =====================================
unit of work       module                      what it holds
=================  ==========================  =====================================
``executions``     :mod:`.records`             submitting, reading, paging executions
``events``         :mod:`.event_log`           the gap-free event log subscribers replay
``claims``         :mod:`.claims`              which queued execution a worker takes
                                               next, leases, requeues, the finish
``cancels``        :mod:`.cancels`             cancellation of queued and running runs
``cache``          :mod:`.cache`               the result cache and shared runs
``quotas``         :mod:`.quotas`              per-user counts behind the limits
``retention``      :mod:`.retention`           purging old finished executions
=================  ==========================  =====================================

What more than one part needs (the tables, row mapping, the event insert,
the end of a shared run's followers) is in :mod:`._base`; the parts never
import each other (an import-linter contract keeps it so).
"""

from ._base import NewEvent
from .cache import ResultCacheStore
from .cancels import CancellationStore, cancel_signal_key
from .claims import ClaimedExecution, ClaimStore
from .event_log import EventLogStore
from .quotas import OwnerCounts, UserQuotaStore
from .records import AddedExecution, ExecutionRecordStore, cursor_for
from .retention import PurgeCandidate, PurgedCounts, RetentionStore

__all__ = [
    "AddedExecution",
    "CancellationStore",
    "ClaimStore",
    "ClaimedExecution",
    "EventLogStore",
    "ExecutionRecordStore",
    "NewEvent",
    "OwnerCounts",
    "PurgeCandidate",
    "PurgedCounts",
    "ResultCacheStore",
    "RetentionStore",
    "UserQuotaStore",
    "cancel_signal_key",
    "cursor_for",
]
