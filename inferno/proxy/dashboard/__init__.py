"""The live dashboard served by the proxy's ops port at ``/dashboard``."""
