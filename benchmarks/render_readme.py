"""Copies the latest result tables (benchmarks/results/*.md) into benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    tables = [
        (HERE / "results" / f"{name}.md").read_text().strip()
        for name in (
            "lb_overhead",
            "peers",
            "instructions",
            "startup",
            "baseline_overhead",
            "keys_overhead",
            "dashboard_overhead",
            "model_throughput",
            "model_kinds",
            "prefix_affinity",
            "deployments",
            "queues",
            "queues_long",
            "queues_before_after",
            "soak",
        )
        if (HERE / "results" / f"{name}.md").exists()
    ]
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n" + "\n\n".join(tables) + f"\n{END}{tail}")


if __name__ == "__main__":
    main()
