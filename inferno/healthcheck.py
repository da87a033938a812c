"""Container health check without curl: ``python -m inferno.healthcheck``.

Exits 0 when ``$INFERNO_HEALTHCHECK_URL`` (default ``http://127.0.0.1:6100/livez``,
the ops port's liveness endpoint on both proxy and backend) answers 200 within
``$INFERNO_HEALTHCHECK_TIMEOUT_S`` (default 2 s), else 1.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = os.environ.get("INFERNO_HEALTHCHECK_URL", "http://127.0.0.1:6100/livez")
    timeout = float(os.environ.get("INFERNO_HEALTHCHECK_TIMEOUT_S", "2"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
