"""Listeners and the command line: tcp tokens, unix socket modes, config errors."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import pytest

from execbus.agent.cli import main
from execbus.testing.agent_peer import AgentPeer, AgentRequestError
from tests.system.agent.harness import AgentFactory, AgentProcess

VSOCK_LOOPBACK = os.path.exists("/sys/module/vsock_loopback")


async def test_tcp_listener_requires_the_right_token(
    agent_factory: AgentFactory, tmp_dir: str
) -> None:
    token_file = os.path.join(tmp_dir, "token")
    with open(token_file, "w") as f:
        f.write("s3cret\n")
    agent = agent_factory("--listen", "tcp://127.0.0.1:0", "--token-file", token_file)
    tcp = next(url for url in agent.addresses if url.startswith("tcp://"))
    port = int(tcp.rsplit(":", 1)[1])
    for token in (None, "wrong", "s3cret-but-longer", 42):
        c = await AgentPeer.tcp("127.0.0.1", port, hello=False)
        try:
            with pytest.raises(AgentRequestError) as err:
                await c.call("hello", versions=[1], token=token)
            assert err.value.code == "unauthorized"
            await c.wait_closed()
        finally:
            await c.close()
    c = await AgentPeer.tcp("127.0.0.1", port, token="s3cret")
    try:
        assert "time" in await c.call("ping")
    finally:
        await c.close()
    unix = await agent.connect()  # the unix listener needs no token
    await unix.close()


def test_tcp_listener_without_token_file_is_a_config_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--listen", "tcp://127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--token-file" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "http://x"],
        ["--listen", "tcp://127.0.0.1"],
        ["--socket-mode", "999"],
        ["--max-frame", "10"],
        ["--token-file", "/no/such/token"],
        ["--no-such-option"],
    ],
)
def test_config_errors_print_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("execbus agent: error: ")
    assert err.count("\n") == 1


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--listen", "--token-file", "--runc-root", "--grace", "--log-format"):
        assert option in out


async def test_unix_socket_mode_and_stale_socket(agent_factory: AgentFactory) -> None:
    agent = AgentProcess(["--socket-mode", "0660"])
    try:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(agent.socket)  # left behind by a killed agent: nobody listens
        stale.close()
        agent.start()
        assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o660
        c = await agent.connect()
        await c.close()
    finally:
        agent.terminate()
        agent.cleanup()
    default = agent_factory()
    assert stat.S_IMODE(os.stat(default.socket).st_mode) == 0o600


def test_second_agent_on_a_live_socket_fails(
    shared_agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--listen", f"unix://{shared_agent.socket}"]) == 2
    assert "in use" in capsys.readouterr().err
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(shared_agent.socket)  # the first agent still listens


@pytest.mark.skipif(not hasattr(socket, "AF_VSOCK"), reason="no AF_VSOCK in this Python")
async def test_vsock_listener(agent_factory: AgentFactory, tmp_dir: str) -> None:
    try:
        probe = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"this kernel has no vsock: {exc}")
    probe.close()
    token_file = os.path.join(tmp_dir, "token")
    with open(token_file, "w") as f:
        f.write("vsock-token")
    port = 20000 + os.getpid() % 20000
    agent = agent_factory("--listen", f"vsock://any:{port}", "--token-file", token_file)
    assert f"vsock://any:{port}" in agent.addresses
    if not VSOCK_LOOPBACK:
        pytest.skip("bound the vsock listener; no vsock loopback here to connect to it")
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (1, port))
    c = AgentPeer(*await asyncio.open_connection(sock=sock))
    try:
        result = await c.call("hello", versions=[1], token="vsock-token")
        assert result["version"] == 1
    finally:
        await c.close()
