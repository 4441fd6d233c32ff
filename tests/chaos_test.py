"""Issue 16's chaos run, short: crashes and restarts must lose nothing.

An operator killed workers (with their Jupyter servers and kernels) and the
API, restarted PostgreSQL and Redis (Redis empty) while executions ran, and
saw executions FAILED with INTERNAL and finished runs repeated.  Only real
processes show that, so this test runs ``bench.chaos`` in a short form: its
own PostgreSQL and Redis, the API and two workers as processes, twelve
executions each followed by a subscriber that resumes with
``afterSequence``, and one fault of each kind while they run.

It asserts what a client is promised:

* every execution SUCCEEDED (a crash is recovered, not reported);
* no finished run ran again, except a run whose worker was killed between
  its last cell and the commit of its result (the harness counts those);
* every subscriber got FINISHED exactly once, and no sequence twice.

On failure the message holds the table, each lost execution's error, the
injected faults, the error lines and tracebacks of the Noteburst logs, and
the tail of every process's log.  ``pytest -m chaos`` selects it alone.
"""

from __future__ import annotations

import pytest

from bench.chaos import SCENARIOS, ChaosOptions, run_scenario, tools_missing

# The stack's start (PostgreSQL, three Python processes, two Jupyter
# servers) takes a good part of this on a loaded 2-CPU machine; every wait
# in the harness is bounded well below it.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]


def test_crashes_and_restarts_lose_nothing() -> None:
    missing = tools_missing()
    if missing is not None:
        pytest.fail(missing)
    options = ChaosOptions(
        executions=12,
        faults=SCENARIOS["one-each"],
        settle_timeout=60,
        max_fault_gap=6,
    )
    result = run_scenario("one-each", options)

    failures = []
    if result.lost:
        failures.append(f"{len(result.lost)} executions not SUCCEEDED")
    if result.repeated_unexplained:
        failures.append(f"{len(result.repeated_unexplained)} finished runs repeated")
    if result.without_end:
        failures.append(f"{len(result.without_end)} subscribers without FINISHED")
    if result.finished_twice:
        failures.append(f"{len(result.finished_twice)} subscribers got FINISHED twice")
    if result.with_repeated_sequences:
        failures.append(
            f"{len(result.with_repeated_sequences)} subscribers got a sequence twice"
        )
    if failures:
        pytest.fail(
            "; ".join(failures) + "\n\n" + result.report() + "\n\n" + result.logs,
            pytrace=False,
        )
