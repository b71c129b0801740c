"""Tools for testing execbus deployments: a TCP fault proxy (fault suite, chaos soak)."""
