"""Pull queues: named job queues at the proxy that workers lease from (docs/queues.md)."""

#: the metric label of every client route of the queues (``/v1/queues/...``, ``/v1/jobs/...``)
CLIENT_ROUTE = "/v1/queues"
