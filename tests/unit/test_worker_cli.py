"""``inferno worker``'s flags become one WorkerConfig: the workload after ``--``, the
environment variables, the token's precedence and the combinations refused."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from inferno.cli import main
from inferno.cli.worker import worker, worker_config
from inferno.worker.config import WorkerConfig

WORKER_TOKEN = "worker-token-0123456789abcdef"
CLUSTER_TOKEN = "cluster-token-0123456789abcdef"


def config(*args: str) -> WorkerConfig:
    """Parse as ``inferno worker ARGS`` would (the group's env prefix included), without running."""
    parent = main.make_context("inferno", ["worker"], resilient_parsing=True)
    ctx = worker.make_context("worker", list(args), parent=parent)
    return worker_config(ctx.params)


BASE = ("--discovery-lb", "127.0.0.1:6100", "--queue", "a")


def test_the_workload_after_the_double_dash_keeps_its_own_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INFERNO_WORKER_TOKEN", "INFERNO_CLUSTER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = config(*BASE, "--queue", "b", "--limit-s", "5", "--", "/bin/work", "--limit-s", "FILENAME")
    assert cfg.queues == ("a", "b")
    assert cfg.workload == ("/bin/work", "--limit-s", "FILENAME")
    assert cfg.limit_s == 5 and cfg.engine is None and cfg.token is None
    assert (cfg.backoff_s, cfg.backoff_max_s, cfg.max_output_bytes, cfg.kill_grace_s) == (
        0.5,
        30.0,
        65536,
        2.0,
    )


def test_flags_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNO_WORKER_LIMIT_S", "7")
    monkeypatch.setenv("INFERNO_NODE_NAME", "node-x")
    monkeypatch.setenv("INFERNO_POD_NAME", "pod-x")
    monkeypatch.setenv("INFERNO_WORKER_DEVICE_NAME", "gpu0")
    cfg = config(*BASE, "--", "sleep")
    assert (cfg.limit_s, cfg.node_name, cfg.pod_name, cfg.device_name) == (7, "node-x", "pod-x", "gpu0")


def test_the_worker_token_wins_over_the_cluster_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INFERNO_CLUSTER_TOKEN", CLUSTER_TOKEN)
    monkeypatch.delenv("INFERNO_WORKER_TOKEN", raising=False)
    assert config(*BASE, "--", "sleep").token.get_secret_value() == CLUSTER_TOKEN  # type: ignore[union-attr]
    monkeypatch.setenv("INFERNO_WORKER_TOKEN", WORKER_TOKEN)
    assert config(*BASE, "--", "sleep").token.get_secret_value() == WORKER_TOKEN  # type: ignore[union-attr]
    file = tmp_path / "token"
    file.write_text("file-token-0123456789abcdef\n")
    cfg = config(*BASE, "--worker-token-file", str(file), "--", "sleep")
    assert cfg.token.get_secret_value() == "file-token-0123456789abcdef"  # type: ignore[union-attr]
    assert "file-token" not in repr(cfg)  # a secret, never shown
    file.write_text("short")
    with pytest.raises(click.BadParameter, match="worker token"):
        config(*BASE, "--worker-token-file", str(file), "--", "sleep")


def test_engine_mode_takes_the_engines_own_options() -> None:
    cfg = config(*BASE, "--engine", "fake", "--fake-tokens-per-s", "99")
    assert cfg.engine == "fake" and cfg.workload == ()
    assert cfg.engine_options["fake_tokens_per_s"] == 99
    assert "model_path" not in cfg.engine_options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((*BASE, "--exit-when-empty", "--backoff-s", "1", "--", "sleep"), "cannot be combined"),
        ((*BASE, "--exit-when-empty", "--backoff-max-s", "1", "--", "sleep"), "cannot be combined"),
        (BASE, "either a workload"),
        ((*BASE, "--engine", "fake", "--", "sleep"), "either a workload"),
        ((*BASE, "--queue", "a", "--", "sleep"), "named twice"),
        (("--discovery-lb", "x:1", "--queue", "bad name", "--", "sleep"), "queue names"),
        ((*BASE, "--backoff-s", "5", "--backoff-max-s", "1", "--", "sleep"), "at least backoff_s"),
        (("--discovery-lb", "nowhere", "--queue", "a", "--", "sleep"), "host:port"),
    ],
)
def test_bad_combinations_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(click.UsageError, match=message):
        config(*args)


def test_exit_when_empty_alone_is_fine() -> None:
    cfg = config(*BASE, "--exit-when-empty", "--", "sleep")
    assert cfg.exit_when_empty and cfg.backoff_s == 0.5
