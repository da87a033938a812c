"""Reading and checking the cluster token."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferno.errors import ConfigError, Unauthorized
from inferno.security import ClusterAuth, new_token, read_token


def test_read_token_from_file_or_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("  file-token-0123456789abcdef\n")
    assert read_token(str(path), {}) == "file-token-0123456789abcdef"
    assert (
        read_token(None, {"INFERNO_CLUSTER_TOKEN": "env-token-0123456789abcdef"})
        == "env-token-0123456789abcdef"
    )
    assert read_token(None, {}) is None
    for bad in ("short", "has spaces in it 0123456789", "x" * 600, "semi;colon-0123456789abc"):
        with pytest.raises(ConfigError):
            read_token(None, {"INFERNO_CLUSTER_TOKEN": bad})
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(str(tmp_path / "missing"), {})
    assert len(new_token()) >= 40 and read_token(None, {"INFERNO_CLUSTER_TOKEN": new_token()})


def test_cluster_auth_checks_the_bearer_header() -> None:
    auth = ClusterAuth("right-token-0123456789")
    auth.check({b"authorization": b"Bearer right-token-0123456789"}, "test", "1.2.3.4")
    for sent in (b"", b"Bearer wrong", b"right-token-0123456789", b"bearer right-token-0123456789"):
        with pytest.raises(Unauthorized):
            auth.check({b"authorization": sent} if sent else {}, "test", "1.2.3.4")
    assert auth.header() == b"Authorization: Bearer right-token-0123456789\r\n"
    off = ClusterAuth(None)
    off.check({}, "test", "1.2.3.4")  # no token configured: nothing to check
    assert not off.enabled and off.header() == b""
