"""The inference backend: worker server, registration with the proxy, vitals."""
