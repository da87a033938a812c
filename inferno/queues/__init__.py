"""Pull queues: named job queues at the proxy that workers lease from (docs/queues.md)."""
