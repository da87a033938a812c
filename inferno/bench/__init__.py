"""``inferno bench``: the load tester (closed/open/burst/ramp, reports, control API)."""
