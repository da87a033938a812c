"""The controller: the small process that holds the orchestrator (the Docker socket)
and makes what runs match what the proxy wants (``inferno controller``)."""

from inferno.controller.client import DesiredState, ProxyClient
from inferno.controller.loop import Backoff, Controller

__all__ = ["Backoff", "Controller", "DesiredState", "ProxyClient"]
