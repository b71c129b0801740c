"""Tools for testing execbus deployments: a TCP fault proxy (used by the fault suite and the chaos soak)."""
