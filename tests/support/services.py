"""The execution services for one caller, as the GraphQL layer gets them.

Submitting, reading/cancelling and watching are three services (see
``noteburst/services/``); tests that drive a whole execution need all
three, built by the factory exactly as the API builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from noteburst.domain.auth import Caller
from noteburst.factory import ApiFactory
from noteburst.services.execution import ExecutionService
from noteburst.services.submission import SubmissionService
from noteburst.services.watch import ExecutionWatcher


@dataclass(frozen=True, slots=True)
class CallerServices:
    """Submit, read/cancel and watch executions as one caller."""

    submissions: SubmissionService
    executions: ExecutionService
    watcher: ExecutionWatcher


def services_for(factory: ApiFactory, caller: Caller) -> CallerServices:
    """Return the three execution services acting for ``caller``."""
    return CallerServices(
        submissions=factory.create_submission_service(caller),
        executions=factory.create_execution_service(caller),
        watcher=factory.create_watcher(caller),
    )
