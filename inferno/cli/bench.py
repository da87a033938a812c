"""``inferno bench``: the load tester."""

from __future__ import annotations

import re
import sys
from typing import Any, cast

import click
from click.core import ParameterSource

from inferno.cli.common import env_rules, hostport, run_loop


@env_rules
@click.command()
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(["inference", "chat", "chat-stream", "batch", "embeddings", "image"]),
    default="inference",
    show_default=True,
    help="Request kind: text (inference, chat, chat-stream, batch), embeddings or image.",
)
@click.option(
    "--mode",
    type=click.Choice(["closed", "open", "burst", "ramp"]),
    default=None,
    help="Load shape (default: open with --rate, burst with --burst-size, ramp with --ramp-to, else closed).",
)
@click.option(
    "-c",
    "--concurrency",
    "--parallelism",
    type=click.IntRange(1, 100_000),
    default=8,
    show_default=True,
    help="Closed loop and queue mode: requests in flight at once (the start value; the control "
    "endpoint changes it).",
)
@click.option("--rate", type=float, default=None, help="Open loop: target requests/s.")
@click.option(
    "--arrival",
    type=click.Choice(["constant", "poisson"]),
    default="constant",
    show_default=True,
    help="Open loop: constant or Poisson inter-arrival times.",
)
@click.option(
    "--burst-size", type=click.IntRange(1), default=None, help="Burst mode: requests fired together."
)
@click.option(
    "--burst-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between bursts.",
)
@click.option("--ramp-to", type=click.IntRange(1), default=None, help="Ramp concurrency up to this.")
@click.option(
    "--ramp-by",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Ramp mode: raise concurrency by this much each step.",
)
@click.option(
    "--ramp-step", type=float, default=1.0, show_default=True, help="Ramp mode: seconds between steps."
)
@click.option("-n", "--requests", type=click.IntRange(1), default=None, help="Stop after this many.")
@click.option(
    "-d", "--duration", "--duration-s", type=float, default=None, help="Stop after this many seconds."
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Spread the load over processes so the client is not the bottleneck.",
)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help='JSONL file of {"prompt": ...} or {"messages": [...]} (default: built-in set).',
)
@click.option(
    "--max-tokens", type=click.IntRange(1), default=32, show_default=True, help="max_tokens of each request."
)
@click.option("--model", default=None, help="Model to ask for (for images: the model_type; default any).")
@click.option(
    "--items",
    type=click.IntRange(1, 2048),
    default=4,
    show_default=True,
    help="Texts per embeddings request; requests per batch.",
)
@click.option(
    "--image",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Photo(s) for --kind image, sent in turn (default: a synthetic 320x240 JPEG).",
)
@click.option("--timeout-s", type=float, default=120.0, show_default=True, help="Per-request timeout.")
@click.option(
    "--output",
    type=click.Choice(["text", "json", "html"]),
    default="text",
    show_default=True,
    help="Report format: text, json, or html (one self-contained page with charts).",
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the report here instead of stdout.",
)
@click.option(
    "--control-addr",
    default=None,
    help="host:port of the control endpoint (GET /stats /nodes /fails, POST /reset /parallelism?value=N).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the prompt order and Poisson arrivals."
)
@click.option("--quiet", is_flag=True, help="No live progress line.")
@click.option(
    "--queue",
    default=None,
    help="Queue mode: submit jobs to this pull queue, each waiting for its result (docs/queues.md).",
)
@click.option("--job-arg", multiple=True, help="Queue mode: an argument of each job's workload (repeatable).")
@click.option(
    "--job-limit-s",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Queue mode: each job's time limit in seconds (0: the worker's own).",
)
@click.option("--api-key", default=None, help="Queue mode: API key, sent as Authorization: Bearer KEY.")
@click.option(
    "--max-parallelism",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Queue mode: the cap of the parallelism, also of POST /parallelism (default: 1000, or "
    "the start parallelism if higher).",
)
@click.option(
    "--delay-s",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Queue mode: pause of each slot between its requests.",
)
def bench(**opts: Any) -> None:
    """Load-test a proxy or backend at URL (e.g. http://127.0.0.1:8080)."""
    from inferno.bench import report as reports
    from inferno.bench.main import BenchConfig, parse_target, run_bench
    from inferno.bench.runner import LoadShape, Mode

    try:
        target = parse_target(opts["url"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from exc
    if opts["queue"] is not None:
        _queue_bench(target, opts)
        return
    if opts["requests"] is None and opts["duration"] is None:
        raise click.UsageError("bound the run with --requests and/or --duration")
    mode = opts["mode"] or (
        "open" if opts["rate"] else "burst" if opts["burst_size"] else "ramp" if opts["ramp_to"] else "closed"
    )
    if mode == "open" and not opts["rate"]:
        raise click.UsageError("--mode open needs --rate")
    if opts["control_addr"]:
        hostport(opts["control_addr"], "--control-addr")
    shape = LoadShape(
        mode=cast(Mode, mode),
        concurrency=opts["concurrency"],
        rate=opts["rate"] or 1.0,
        arrival=opts["arrival"],
        burst_size=opts["burst_size"] or 10,
        burst_interval_s=opts["burst_interval"],
        ramp_to=opts["ramp_to"] or opts["concurrency"],
        ramp_by=opts["ramp_by"],
        ramp_step_s=opts["ramp_step"],
        requests=opts["requests"],
        duration_s=opts["duration"],
        timeout_s=opts["timeout_s"],
    )
    config = BenchConfig(
        target=target,
        kind=opts["kind"],
        shape=shape,
        processes=opts["processes"],
        prompts_path=opts["prompts"],
        max_tokens=opts["max_tokens"],
        model=opts["model"],
        items=opts["items"],
        images=tuple(opts["image"]),
        control_addr=opts["control_addr"],
        progress=not opts["quiet"],
        seed=opts["seed"],
    )
    result: dict[str, Any] = {}

    async def go() -> None:
        result["report"], result["samples"] = await run_bench(config)

    run_loop(go())
    report = result["report"]
    if opts["output"] == "json":
        out = reports.as_json(report)
    elif opts["output"] == "html":
        out = reports.html_page(report, result["samples"])
    else:
        out = reports.text(report)
    if opts["output_file"]:
        with open(opts["output_file"], "w", encoding="utf-8") as fh:
            fh.write(out)
        click.echo(reports.text(report), err=True)
    else:
        click.echo(out)
    sys.exit(0 if report["summary"]["succeeded"] else 1)


QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _queue_bench(target: str, opts: dict[str, Any]) -> None:
    """``--queue NAME``: the pull-queue load (docs/queues.md, "Test client")."""
    from inferno.bench.queue import QueueLoadConfig
    from inferno.bench.queue_main import run_queue_bench
    from inferno.bench.render import render

    if not QUEUE_NAME.fullmatch(opts["queue"]):
        raise click.BadParameter("queue names are [A-Za-z0-9_.-]{1,64}", param_hint="--queue")
    if opts["processes"] != 1:
        raise click.UsageError("--queue runs in one process (--processes 1)")
    parallelism = opts["concurrency"]
    cap = opts["max_parallelism"] or max(1000, parallelism)
    if click.get_current_context().get_parameter_source("concurrency") == ParameterSource.DEFAULT:
        parallelism = min(parallelism, cap)  # only a parallelism asked for can be over the cap
    if parallelism > cap:
        raise click.UsageError(f"--parallelism {parallelism} is over --max-parallelism {cap}")
    if len(opts["job_arg"]) > 64:
        raise click.UsageError("at most 64 --job-arg")
    control = hostport(opts["control_addr"], "--control-addr") if opts["control_addr"] else None
    config = QueueLoadConfig(
        target=target,
        queue=opts["queue"],
        args=tuple(opts["job_arg"]),
        limit_s=opts["job_limit_s"],
        api_key=opts["api_key"],
        parallelism=parallelism,
        max_parallelism=cap,
        delay_s=opts["delay_s"],
        duration_s=opts["duration"],
        requests=opts["requests"],
        timeout_s=opts["timeout_s"],
    )
    result: dict[str, Any] = {}

    async def go() -> None:
        result["report"] = await run_queue_bench(config, control_addr=control, progress=not opts["quiet"])

    try:
        run_loop(go())
    except OSError as exc:  # the control port could not be bound: nothing ran
        raise click.ClickException(f"cannot serve --control-addr {opts['control_addr']}: {exc}") from None
    report = result["report"]
    shape = {"text": "plain"}.get(opts["output"], opts["output"])
    out = render(report, shape).decode()
    if opts["output_file"]:
        with open(opts["output_file"], "w", encoding="utf-8") as fh:
            fh.write(out)
        click.echo(render(report, "plain").decode(), err=True)
    else:
        click.echo(out, nl=False)
    sys.exit(0 if report.data["summary"]["results"] else 1)
