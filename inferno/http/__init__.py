"""Raw-protocol HTTP server and pooled upstream client (httptools on asyncio/uvloop)."""
