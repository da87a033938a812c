"""deploy/keda/scaledobject.yaml: the shape KEDA expects, on metrics the proxy exports
(no Kubernetes here, so this is all that can be checked)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from inferno.config import QueueConfig, QueueSpec
from inferno.queues.metrics import QueueCollector
from inferno.queues.service import QueueService

ROOT = Path(__file__).resolve().parents[2]


def test_scaled_object_scales_the_worker_deployment_on_an_exported_metric() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "keda" / "scaledobject.yaml").read_text()))
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    workers = next(d for d in docs if d["kind"] == "Deployment")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == workers["metadata"]["name"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    trigger = spec["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert float(trigger["metadata"]["threshold"]) > 0
    names = set(re.findall(r"inferno_[a-z_]+", trigger["metadata"]["query"]))
    exported = {
        f.name for f in QueueCollector(QueueService((QueueSpec(name="sim"),), QueueConfig())).collect()
    }
    assert names and names <= exported, names - exported
    queue = re.search(r'queue="([^"]+)"', trigger["metadata"]["query"])
    args = workers["spec"]["template"]["spec"]["containers"][0]["args"]
    assert queue is not None and args[0] == "worker" and args[args.index("--queue") + 1] == queue.group(1)
