"""Prometheus metrics of the Jupyter adapters: kernel starts, lab spawns, pools.

Declared here rather than in :mod:`noteburst.metrics` because this package
imports nothing of Noteburst's (an import-linter contract); both use
prometheus_client's default registry, so a process's ``/metrics`` shows
them together.  Kernel names are labels: they are the deployment's
configured kernels, a bounded set.

Pool sizes are read when scraped, from the pools alive in the process
(:func:`track_pool`), rather than kept in gauges that every take and start
would have to update in step.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .pool import KernelPool

__all__ = ["KERNEL_START_SECONDS", "LAB_SPAWN_SECONDS", "track_pool"]

KERNEL_START_SECONDS: Final = Histogram(
    "noteburst_kernel_start_seconds",
    "Time from asking Jupyter for a kernel to its kernel_info reply (pooled "
    "starts include their warm-up), by kernel name and by who waited: "
    'source="pool" (ahead of demand) or "on_demand" (an execution waited).',
    ["kernel_name", "source"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
LAB_SPAWN_SECONDS: Final = Histogram(
    "noteburst_lab_spawn_seconds",
    "Time JupyterHub took to start a worker's JupyterLab server.",
    buckets=(1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)

_POOLS: Final[weakref.WeakSet[KernelPool]] = weakref.WeakSet()


def track_pool(pool: KernelPool) -> None:
    """Count ``pool``'s kernels in the pool gauges while it is alive."""
    _POOLS.add(pool)


class _PoolCollector(Collector):
    """``noteburst_kernel_pool_ready`` and ``..._target``, summed per kernel name."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "noteburst_kernel_pool_ready",
            "Started kernels waiting in this process's pools, by kernel name.",
            labels=["kernel_name"],
        )
        target = GaugeMetricFamily(
            "noteburst_kernel_pool_target",
            "Kernels this process's pools aim to keep (ready, starting or just "
            "handed out; grows with demand), by kernel name.",
            labels=["kernel_name"],
        )
        ready_by_name: dict[str, int] = {}
        target_by_name: dict[str, int] = {}
        for pool in list(_POOLS):
            for name in pool.kernel_names:
                stats = pool.stats(name)
                ready_by_name[name] = ready_by_name.get(name, 0) + stats.ready
                target_by_name[name] = target_by_name.get(name, 0) + stats.target
        for name, value in sorted(ready_by_name.items()):
            ready.add_metric([name], value)
        for name, value in sorted(target_by_name.items()):
            target.add_metric([name], value)
        yield ready
        yield target

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


REGISTRY.register(_PoolCollector())
