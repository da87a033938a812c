"""Cluster and client authentication: the cluster token, API keys, budgets and usage."""

from inferno.security.keys import ApiKey, KeyStore, key_id, verify
from inferno.security.ratelimit import TokenBucket
from inferno.security.token import (
    ADMIN_TOKEN_ENV,
    TOKEN_ENV,
    WORKER_TOKEN_ENV,
    ClusterAuth,
    new_token,
    read_token,
)
from inferno.security.usage import Usage, UsageLedger
from inferno.state import connect

__all__ = [
    "ADMIN_TOKEN_ENV",
    "TOKEN_ENV",
    "WORKER_TOKEN_ENV",
    "ApiKey",
    "ClusterAuth",
    "KeyStore",
    "TokenBucket",
    "Usage",
    "UsageLedger",
    "connect",
    "key_id",
    "new_token",
    "read_token",
    "verify",
]
