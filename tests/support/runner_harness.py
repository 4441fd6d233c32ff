"""An API context and a worker context sharing one bus, for service tests.

What the embedded default wires up, without the web server: the services a
GraphQL request would get (:attr:`Harness.service`), the runner and the
recovery sweep a worker would get, and the stub broker between them (tests
deliver its messages by hand).  The ``harness`` fixture (in
``tests/services/conftest.py``) builds one per test on the test's database.
"""

from __future__ import annotations

from dataclasses import dataclass

from dramatiq.brokers.stub import StubBroker

from noteburst.factory import ApiContext, WorkerContext
from noteburst.services.recovery import RecoverySweep
from noteburst.services.runner import ExecutionRunner
from tests.support.services import CallerServices


@dataclass
class Harness:
    service: CallerServices
    runner: ExecutionRunner
    recovery: RecoverySweep
    api: ApiContext
    broker: StubBroker
    worker: WorkerContext
