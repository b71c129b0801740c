"""The exec registry: every exec's lifecycle, as pure logic (no I/O)."""

from execbus.registry.records import ExecRecord
from execbus.registry.registry import ExecRegistry, RegistryLimits, StartAction, StartDecision

__all__ = ["ExecRecord", "ExecRegistry", "RegistryLimits", "StartAction", "StartDecision"]
