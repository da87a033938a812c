"""The ``local`` orchestrator's parts that need no backend: the command line, records,
pid identity, and the start backoff on an injected clock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inferno.deployments.spec import AutoScalingConfig, DeploymentSpec
from inferno.errors import ConfigError
from inferno.orchestrators import DesiredDeployment, LocalOrchestrator, Orchestrator, OrchestratorContext
from inferno.orchestrators.processes import (
    InstanceProcess,
    InstanceRecord,
    RecordStore,
    backend_argv,
    pid_start_time,
)


def test_the_command_line_names_the_engine_model_ports_and_options_but_not_the_token() -> None:
    spec = DeploymentSpec(
        model="m@1",
        backend="llamacpp",
        backend_config={"model_path": "sub/x.gguf", "n_parallel": 3},
        auto_scaling_config=AutoScalingConfig(drain_timeout_s=7),
    )
    argv = backend_argv("/py", spec, "m@1-abcd", (4000, 4001), "127.0.0.1:6100", "/models")
    assert argv[:4] == ["/py", "-m", "inferno", "backend"]
    assert argv[4:] == [
        "--listen-addr",
        "127.0.0.1:4000",
        "--ops-addr",
        "127.0.0.1:4001",
        "--discovery-lb",
        "127.0.0.1:6100",
        "--node-id",
        "m@1-abcd",
        # the deployment's own flags, always --flag=value: a value is never taken for a flag
        "--engine=llamacpp",
        "--model-id=m@1",
        "--drain-grace-s=7.0",
        "--model-path=/models/sub/x.gguf",
        "--n-parallel=3",
    ]


def test_records_are_written_whole_and_unreadable_ones_removed(tmp_path: Path) -> None:
    store = RecordStore(str(tmp_path))
    store.ensure()
    record = InstanceRecord("a-1", "a", 2, 123, 456, 4000, 4001, "127.0.0.1:4000", 1.5, 9.0, 20.0)
    store.write(record)
    (store.root / "broken.json").write_text("{")
    (store.root / ".left.json.tmp").write_text("{")
    assert store.load() == [record]
    assert sorted(p.name for p in store.root.iterdir()) == ["a-1.json", "logs"]
    assert json.loads(store.path("a-1").read_text())["pid_start"] == 456
    store.remove("a-1")
    store.remove("a-1")  # twice is fine
    assert store.load() == []


def test_a_pid_is_ours_only_with_its_start_time() -> None:
    me, start = os.getpid(), pid_start_time(os.getpid())
    assert start is not None
    assert InstanceProcess(me, start).alive()
    assert not InstanceProcess(me, start + 1).alive()  # the pid was reused
    assert pid_start_time(2**22 + 1) is None


def test_options_come_from_the_context(tmp_path: Path) -> None:
    def context(*options: tuple[str, str]) -> OrchestratorContext:
        return OrchestratorContext(str(tmp_path), "127.0.0.1:6100", options=options)

    assert isinstance(Orchestrator.create("local", context(("probe_timeout_s", "2"))), LocalOrchestrator)
    for options, message in [
        ((("image", "x"),), "no option 'image'"),
        ((("probe_timeout_s", "soon"),), "not a float"),
        ((("backoff_base_s", "0"),), "must be positive"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Orchestrator.create("local", context(*options))


async def test_failed_starts_back_off_one_start_per_window_doubling_to_the_cap(tmp_path: Path) -> None:
    now = [100.0]
    # A Python that does not exist: every start fails at once, no process is made.
    orch = LocalOrchestrator(
        str(tmp_path),
        "127.0.0.1:1",
        clock=lambda: now[0],
        python=str(tmp_path / "no-python"),
        backoff_max_s=8.0,
    )
    await orch.start()
    want = [DesiredDeployment(DeploymentSpec(model="m", backend="fake"), 1, 3)]

    def failures() -> int:
        return int(orch.status()["deployments"]["m"]["failures"])

    try:
        await orch.reconcile(want)
        assert failures() == 1  # the first failure stops the other two starts as well
        seen = []
        for _ in range(40):  # 20 s in half-second steps
            now[0] += 0.5
            await orch.reconcile(want)
            seen.append(failures())
        # Windows of 1, 2, 4, then 8 s (the cap): failures at +1, +3, +7, +15 s.
        times = [0.5 * (seen.index(n) + 1) for n in range(2, max(seen) + 1)]
        assert times == [1.0, 3.0, 7.0, 15.0]
        assert orch.status()["deployments"]["m"]["backoff_s"] == pytest.approx(8.0 - 5.0)
        assert orch.instances() == []
    finally:
        await orch.aclose()


def test_an_option_value_that_looks_like_a_flag_stays_a_value() -> None:
    import click

    from inferno.cli.backend import backend

    spec = DeploymentSpec(model="m", backend="llamacpp", backend_config={"system_prompt": "--chaos"})
    argv = backend_argv("/py", spec, "m-1", (4000, 4001), "127.0.0.1:6100", None)
    ctx = backend.make_context("backend", argv[4:], resilient_parsing=True)
    assert ctx.params["system_prompt"] == "--chaos" and ctx.params["chaos"] is False
    assert isinstance(ctx, click.Context)
