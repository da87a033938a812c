"""Container health check without curl: ``python -m inferno.healthcheck``.

Exits 0 when ``$INFERNO_HEALTHCHECK_URL`` answers 200 within
``$INFERNO_HEALTHCHECK_TIMEOUT_S`` (default 2 s), else 1. Unset, it tries the ops
port's liveness endpoint at the proxy's default (6100), then the backend's (6300).
With ``$INFERNO_HEALTHCHECK_FILE`` set (the controller, which has no port), it exits
0 when that file was touched within ``$INFERNO_HEALTHCHECK_MAX_AGE_S`` (default 30 s).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request


def file_fresh(path: str) -> int:
    max_age = float(os.environ.get("INFERNO_HEALTHCHECK_MAX_AGE_S", "30"))
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError as exc:
        print(f"unhealthy: {path}: {exc}", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"unhealthy: {path} is {age:.0f}s old (over {max_age:.0f}s)", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    alive_file = os.environ.get("INFERNO_HEALTHCHECK_FILE")
    if alive_file:
        return file_fresh(alive_file)
    configured = os.environ.get("INFERNO_HEALTHCHECK_URL")
    urls = [configured] if configured else [f"http://127.0.0.1:{port}/livez" for port in (6100, 6300)]
    timeout = float(os.environ.get("INFERNO_HEALTHCHECK_TIMEOUT_S", "2"))
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return 0
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
