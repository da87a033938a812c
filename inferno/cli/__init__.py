"""The ``inferno`` command: one module per subcommand.

Every flag can be set from the environment as ``INFERNO_<COMMAND>_<FLAG>``
(click's ``auto_envvar_prefix``), e.g. ``INFERNO_PROXY_POLICY``; ``--help`` shows
each. Two aliases from existing deployment docs are honoured as well:
``INFERNO_LISTEN_ADDR`` for the proxy's listen address and
``INFERNO_BACKEND_LISTEN_ADDR`` for the backend's.
"""

from __future__ import annotations

import click

from inferno.cli.backend import backend
from inferno.cli.bench import bench
from inferno.cli.controller import controller
from inferno.cli.deploy import deploy
from inferno.cli.keys import keys
from inferno.cli.proxy import proxy
from inferno.cli.up import up
from inferno.cli.worker import worker


@click.group(context_settings={"auto_envvar_prefix": "INFERNO", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inferno-serve")
def main() -> None:
    """Inferno: a load-balancing proxy and inference backends for language, embeddings and image models."""


main.add_command(keys)
main.add_command(deploy)
for _command in (proxy, backend, worker, controller, up, bench):
    main.add_command(_command)
    for _param in _command.params:
        if isinstance(_param, click.Option):
            # Every option's help shows the environment variable that sets it...
            _param.show_envvar = True
            # ...and an option with aliases (INFERNO_LISTEN_ADDR, OTEL_EXPORTER_OTLP_ENDPOINT)
            # still answers to the rule's name, INFERNO_<COMMAND>_<FLAG>, first.
            if _param.envvar:
                _flag = next(o for o in _param.opts if o.startswith("--"))
                _rule = f"INFERNO_{_command.name}_{_flag[2:]}".upper().replace("-", "_")
                _aliases = [_param.envvar] if isinstance(_param.envvar, str) else list(_param.envvar)
                _param.envvar = [_rule, *(a for a in _aliases if a != _rule)]

__all__ = ["backend", "bench", "controller", "deploy", "keys", "main", "proxy", "up", "worker"]
