"""The ``execbus`` command line."""
