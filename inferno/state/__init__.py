"""The proxy's state database (SQLite): API keys, usage, deployments and their instances."""

from inferno.state.db import DB_NAME, SCHEMA_VERSION, connect

__all__ = ["DB_NAME", "SCHEMA_VERSION", "connect"]
