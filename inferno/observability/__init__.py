"""Logging set-up and metrics."""
