"""``inferno_jobqueue_*``: the pull queues' families, built at scrape time.

(``inferno_queue_*`` belongs to the admission queue of the push path.) A KEDA or
HPA scaler divides ``inferno_jobqueue_backlog`` by the jobs one worker runs at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from inferno.queues.jobs import Outcome
from inferno.queues.report import snapshot
from inferno.queues.service import QueueService


class QueueCollector(Collector):
    def __init__(self, service: QueueService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        rows = snapshot(service.queues, service.wall())

        def gauge(name: str, doc: str, key: str) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"inferno_jobqueue_{name}", doc, labels=["queue"])
            for queue, row in rows.items():
                family.add_metric([queue], float(row[key]))
            return family

        yield gauge("waiting", "Jobs waiting for a worker", "waiting")
        yield gauge("running", "Jobs leased to a worker", "running")
        yield gauge("backlog", "Jobs waiting or running: what a scaler divides by jobs per worker", "backlog")
        yield gauge("dead", "Dead-lettered jobs kept", "dead")
        yield gauge("workers_polling", "Workers long-polling for a job now", "workers_polling")
        yield gauge("oldest_wait_seconds", "Age of the oldest waiting job", "oldest_wait_s")
        yield gauge("max_size", "Jobs not finished the queue accepts at most", "max_size")

        wait = HistogramMetricFamily(
            "inferno_jobqueue_wait_seconds", "Time from arrival to the (last) lease", labels=["queue"]
        )
        run = HistogramMetricFamily(
            "inferno_jobqueue_run_seconds", "Workload run time reported by the worker", labels=["queue"]
        )
        maxima = {
            key: GaugeMetricFamily(
                f"inferno_jobqueue_max_{key}_seconds",
                f"Largest {key} time in the current stats window (closed by the stats tick, not by scrapes)",
                labels=["queue"],
            )
            for key in ("wait", "run", "total")
        }
        completed = CounterMetricFamily(
            "inferno_jobqueue_completed", "Jobs finished, by outcome", labels=["queue", "outcome"]
        )
        disconnects = CounterMetricFamily(
            "inferno_jobqueue_client_disconnects",
            "Clients that went away while their job was waiting or running",
            labels=["queue", "phase"],
        )
        redeliveries = CounterMetricFamily(
            "inferno_jobqueue_redeliveries",
            "Jobs put back in their queue, by reason",
            labels=["queue", "reason"],
        )
        rejected = CounterMetricFamily(
            "inferno_jobqueue_rejected", "Submissions refused, by reason", labels=["queue", "reason"]
        )
        submitted = CounterMetricFamily("inferno_jobqueue_submitted", "Jobs accepted", labels=["queue"])
        stale = CounterMetricFamily(
            "inferno_jobqueue_stale_completions",
            "Heartbeats, completions and releases refused because the lease was no longer valid",
            labels=["queue"],
        )
        for name, queue in service.queues.items():
            s = queue.stats
            wait.add_metric([name], s.wait.buckets(), s.wait.sum)
            run.add_metric([name], s.run.buckets(), s.run.sum)
            maxima["wait"].add_metric([name], s.window.max_wait_s)
            maxima["run"].add_metric([name], s.window.max_run_s)
            maxima["total"].add_metric([name], s.window.max_total_s)
            for outcome in Outcome:
                completed.add_metric([name, outcome.value], s.completed.get(outcome.value, 0))
            for phase, count in s.disconnects.items():
                disconnects.add_metric([name, phase], count)
            for reason, count in s.redeliveries.items():
                redeliveries.add_metric([name, reason], count)
            for reason, count in s.rejected.items():
                rejected.add_metric([name, reason], count)
            submitted.add_metric([name], s.submitted)
            stale.add_metric([name], s.stale_completions)
        yield wait
        yield run
        yield from maxima.values()
        yield from (completed, disconnects, redeliveries, rejected, submitted, stale)
