"""deploy/observability: the scrape config passes promtool, and every metric the
Grafana dashboard queries is one the proxy or a backend actually exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "deploy" / "observability"


def test_scrape_config_passes_promtool() -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (make test-deps)")
    out = subprocess.run(
        [tool, "check", "config", str(ASSETS / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_queries_only_documented_metrics() -> None:
    dashboard = json.loads((ASSETS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"inferno_[a-z_]+", e)}
    documented = set(re.findall(r"inferno_[a-z_]+", (ROOT / "docs" / "observability.md").read_text()))
    assert used and used <= documented, used - documented
