"""Agent connections: one async interface, several kinds of agent behind it."""

from execbus.connections.address import AgentAddress, parse_address, parse_agent_spec
from execbus.connections.base import AgentConnection, AgentExec, AgentInfo, AgentListener
from execbus.connections.factory import ConnectOptions, make_connection
from execbus.connections.retry import RetryPolicy, call_with_retry

__all__ = [
    "AgentAddress",
    "AgentConnection",
    "AgentExec",
    "AgentInfo",
    "AgentListener",
    "ConnectOptions",
    "RetryPolicy",
    "call_with_retry",
    "make_connection",
    "parse_address",
    "parse_agent_spec",
]
