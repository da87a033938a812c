"""Container health check without curl: ``python -m inferno.healthcheck``.

Exits 0 when ``$INFERNO_HEALTHCHECK_URL`` answers 200 within
``$INFERNO_HEALTHCHECK_TIMEOUT_S`` (default 2 s), else 1. Unset, it tries the ops
port's liveness endpoint at the proxy's default (6100), then the backend's (6300).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
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
