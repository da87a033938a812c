"""The load-balancing proxy: HTTP front, forwarding, retries, ops API."""
