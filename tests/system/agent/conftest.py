"""Fixtures for the agent tests: real agent processes on real sockets."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from execbus.testing.agent_peer import AgentPeer
from tests.system.agent.harness import AgentFactory, AgentProcess


@pytest.fixture(scope="session")
def shared_agent() -> Iterator[AgentProcess]:
    """One agent shared by the tests that do not need their own configuration."""
    agent = AgentProcess(["--grace", "0"]).start()
    try:
        yield agent
    finally:
        agent.terminate()
        agent.cleanup()


@pytest.fixture
def agent_factory() -> Iterator[AgentFactory]:
    """Start agents with extra arguments; all are stopped after the test."""
    agents: list[AgentProcess] = []

    def start(*args: str, **kw: Any) -> AgentProcess:
        agent = AgentProcess(["--grace", "0", *args], **kw)
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.terminate()
        agent.cleanup()


@pytest.fixture
async def client(shared_agent: AgentProcess) -> AsyncIterator[AgentPeer]:
    """A greeted connection to the shared agent."""
    c = await shared_agent.connect()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def tmp_dir() -> Iterator[str]:
    """A short temporary directory readable by everyone (for other users' execs)."""
    path = tempfile.mkdtemp(prefix="eb-t-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
