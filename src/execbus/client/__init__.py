"""The execbus client SDK (asyncio): :class:`Client` and :class:`RunResult`."""

from execbus.client.client import Client
from execbus.client.cluster import Announcements
from execbus.client.config import ExecOptions
from execbus.client.execution import Execution
from execbus.client.results import RunResult, exit_code_of
from execbus.client.subscriptions import OutputStream, Subscription

__all__ = [
    "Announcements",
    "Client",
    "ExecOptions",
    "Execution",
    "OutputStream",
    "RunResult",
    "Subscription",
    "exit_code_of",
]
