"""``inferno worker``: the pulling process of the pull queues (docs/queues.md#worker).

It leases jobs from queues at the proxy's ops port, runs a workload (a process, a
built-in, or an engine) for each, heartbeats the lease while it runs and reports
the result. It only ever dials out.
"""

from inferno.worker.client import Lease, WorkerClient, WorkerIdentity
from inferno.worker.config import WorkerConfig
from inferno.worker.loop import Worker
from inferno.worker.pacing import Backoff, QueueRotation
from inferno.worker.runner import DevicePool, JobResult, JobSpec, ProcessRunner, Runner, RunnerSettings

__all__ = [
    "Backoff",
    "DevicePool",
    "JobResult",
    "JobSpec",
    "Lease",
    "ProcessRunner",
    "QueueRotation",
    "Runner",
    "RunnerSettings",
    "Worker",
    "WorkerClient",
    "WorkerConfig",
    "WorkerIdentity",
]
