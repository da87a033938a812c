"""``inferno deploy apply``'s plan: a pure function of the proxy's views and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from inferno.cli.deploy import admin_token
from inferno.deployments.apply import Action, changed_paths, load_specs, merge_patch, normalize, plan


def view(spec: dict[str, Any], state: str = "active") -> dict[str, Any]:
    """What GET shows: the spec with every default filled in."""
    return {"id": spec["model"], "spec": normalize(spec), "generation": 1, "desired": 0, "state": state}


FAKE = {"model": "a", "backend": "fake", "backend_config": {"fake_tokens_per_s": 100.0}}


def test_missing_deployments_are_created_with_their_defaults() -> None:
    (action,) = plan([], [FAKE], normalize=normalize)
    assert action.kind == "create" and action.id == "a"
    assert action.body == normalize(FAKE)
    assert action.body["auto_scaling_config"]["min_instances"] == 0


def test_applying_the_same_file_again_changes_nothing() -> None:
    # The file leaves defaults out; GET fills them in: still equal.
    assert plan([view(FAKE)], [FAKE], normalize=normalize) == [Action("unchanged", "a")]


def test_a_changed_field_becomes_a_merge_patch_of_just_that_field() -> None:
    changed = {**FAKE, "auto_scaling_config": {"max_instances": 4}}
    (action,) = plan([view(FAKE)], [changed], normalize=normalize)
    assert action.kind == "update"
    assert action.body == {"auto_scaling_config": {"max_instances": 4}}
    assert action.changes == ("auto_scaling_config.max_instances",)
    assert action.describe() == "update a: auto_scaling_config.max_instances"


def test_a_key_the_file_no_longer_has_is_removed_and_a_default_restored() -> None:
    before = {**FAKE, "backend_config": {"fake_tokens_per_s": 100.0, "fake_latency_ms": 5.0}}
    before["auto_scaling_config"] = {"max_instances": 4, "keep_alive_s": 5.0}
    (action,) = plan([view(before)], [FAKE], normalize=normalize)
    assert action.body == {
        "backend_config": {"fake_latency_ms": None},
        "auto_scaling_config": {"max_instances": 1, "keep_alive_s": 60.0},
    }


def test_others_are_left_alone_unless_pruned() -> None:
    other = {"model": "b", "backend": "fake"}
    current = [view(FAKE), view(other)]
    assert [a.kind for a in plan(current, [FAKE], normalize=normalize)] == ["unchanged"]
    actions = plan(current, [FAKE], normalize=normalize, prune=True)
    assert actions == [Action("unchanged", "a"), Action("delete", "b")]
    # An empty file with --prune deletes everything (but not what is already going).
    gone = [view(FAKE), view(other, state="deleting")]
    assert plan(gone, [], normalize=normalize, prune=True) == [Action("delete", "a")]


def test_a_deployment_being_deleted_is_not_recreated_yet() -> None:
    (action,) = plan([view(FAKE, state="deleting")], [FAKE], normalize=normalize)
    assert action.kind == "blocked" and "being deleted" in action.describe()


def test_creates_and_updates_keep_the_file_order_and_deletes_come_last() -> None:
    b, c = {"model": "b", "backend": "fake"}, {"model": "c", "backend": "fake"}
    current = [
        view({"model": "z", "backend": "fake"}),
        view({**b, "auto_scaling_config": {"max_instances": 2}}),
    ]
    actions = plan(current, [c, b, FAKE], normalize=normalize, prune=True)
    assert [(a.kind, a.id) for a in actions] == [
        ("create", "c"),
        ("update", "b"),
        ("create", "a"),
        ("delete", "z"),
    ]


def test_an_invalid_spec_fails_the_whole_plan_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'a'.*backend_config.nope: unknown key"):
        plan([], [{"model": "a", "backend": "fake", "backend_config": {"nope": 1}}], normalize=normalize)
    with pytest.raises(ValueError, match="'x'"):
        plan([], [{"model": "x", "backend": "no-such-engine"}], normalize=normalize)


def test_the_file_shape_is_checked() -> None:
    text = """
deployments:
  - model: a
    backend: fake
    auto_scaling_config: {min_instances: 1, max_instances: 2}
  - model: b
    backend: fake
"""
    specs = load_specs(yaml.safe_load(text))
    assert [s["model"] for s in specs] == ["a", "b"]
    assert load_specs({"deployments": None}) == []
    for bad, message in [
        ([FAKE], "top-level key"),
        ({"deployments": [FAKE], "extra": 1}, "top-level key"),
        ({"deployments": FAKE}, "must be a list"),
        ({"deployments": [{"backend": "fake"}]}, r"deployments\[0\]"),
        ({"deployments": [FAKE, FAKE]}, "appears twice"),
        ({"deployments": [FAKE] * 300}, "at most"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_specs(bad)


def test_merge_patch_is_minimal_and_round_trips() -> None:
    current = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": None, "f": 3}
    target = {"a": 1, "b": {"c": 3, "d": [1, 2]}, "e": None, "g": {"h": 1}}
    patch = merge_patch(current, target)
    assert patch == {"b": {"c": 3}, "f": None, "g": {"h": 1}}
    assert sorted(changed_paths(patch)) == ["b.c", "f", "g.h"]
    assert merge_patch(target, target) == {}


def test_the_admin_token_comes_from_the_file_then_the_environment_then_the_default_file(
    tmp_path: Path,
) -> None:
    given = tmp_path / "token"
    given.write_text("from-file\n")
    default = tmp_path / "admin-token"
    env = {"INFERNO_ADMIN_TOKEN": "from-env"}
    assert admin_token(str(given), env, default) == "from-file"
    assert admin_token(None, env, default) == "from-env"
    assert admin_token(None, {}, default) is None
    default.write_text("from-default\n")
    assert admin_token(None, {}, default) == "from-default"
    with pytest.raises(click.BadParameter, match="cannot read"):
        admin_token(str(tmp_path / "missing"), env, default)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(click.BadParameter, match="empty"):
        admin_token(str(tmp_path / "empty"), env, default)


def test_worker_deployments_name_a_queue_and_run_no_command() -> None:
    from inferno.deployments.spec import DeploymentSpec

    ok = DeploymentSpec.model_validate(
        {"model": "w", "backend": "fake", "kind": "worker", "queue": "sim", "workload": "fake-device"}
    )
    assert ok.worker_args(None) == ["--queue=sim", "--", "fake-device"]
    bad: list[dict[str, object]] = [
        {"model": "w", "backend": "fake", "kind": "worker"},  # no queue
        {"model": "w", "backend": "fake", "queue": "sim"},  # a backend with a queue
        {"model": "w", "backend": "fake", "kind": "worker", "queue": "sim", "workload": "/bin/sh"},
        {"model": "w", "backend": "minilm", "kind": "worker", "queue": "sim"},  # not a text engine
        {"model": "w", "backend": "fake", "kind": "worker", "queue": "a b"},
    ]
    for body in bad:
        with pytest.raises(ValueError):
            DeploymentSpec.model_validate(body)


def test_a_files_queues_become_queue_flags_and_must_exist_on_the_proxy() -> None:
    from inferno.deployments.apply import check_queues, load_queues

    doc = {"deployments": [], "queues": ["a", {"name": "b", "max_size": 5, "max_message_bytes": 4096}]}
    assert load_queues(doc) == ["a:1024", "b:5:4096"]
    assert load_specs(doc) == []
    check_queues(["a", "b"], load_queues(doc))
    with pytest.raises(ValueError, match="not declared"):
        check_queues(["a"], load_queues(doc))
    with pytest.raises(ValueError):
        load_queues({"queues": [{"name": "a", "command": "rm"}]})
