"""Running execs as other users (Docker ``--user`` rules)."""

from __future__ import annotations

import grp
import pwd
import uuid

import pytest

from execbus.testing.agent_peer import AgentPeer, AgentRequestError
from tests.system.agent.harness import GUEST_PYTHON, IS_ROOT, AgentFactory, requires_root

ID_SCRIPT = 'echo "$(id -u) $(id -g) $(id -G) $HOME"'


def _ids(out: bytes) -> list[str]:
    return out.decode().split()


@requires_root
async def test_run_as_nobody(client: AgentPeer) -> None:
    nobody = pwd.getpwnam("nobody")
    _, out, _ = await client.run(["sh", "-c", ID_SCRIPT], user="nobody")
    uid, gid = str(nobody.pw_uid), str(nobody.pw_gid)
    assert _ids(out) == [uid, gid, gid, nobody.pw_dir]
    _, out, _ = await client.run(["sh", "-c", ID_SCRIPT], user=uid)
    assert _ids(out) == [uid, gid, gid, nobody.pw_dir]


@requires_root
async def test_run_as_user_and_group(client: AgentPeer) -> None:
    try:
        nogroup = grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("no group named nogroup on this system")
    gid = str(nogroup.gr_gid)
    _, out, _ = await client.run(["sh", "-c", ID_SCRIPT], user="nobody:nogroup")
    assert _ids(out)[:3] == [str(pwd.getpwnam("nobody").pw_uid), gid, gid]


@requires_root
async def test_numeric_ids_need_no_passwd_entry(client: AgentPeer) -> None:
    _, out, _ = await client.run(["sh", "-c", ID_SCRIPT], user="43210:43211")
    assert _ids(out) == ["43210", "43211", "43211", "/"]
    _, out, _ = await client.run(["sh", "-c", ID_SCRIPT], user="43210")
    assert _ids(out) == ["43210", "0", "0", "/"]  # Docker: unknown uid runs with gid 0


@requires_root
async def test_root_user_drops_supplementary_groups(client: AgentPeer) -> None:
    _, out, _ = await client.run(["id", "-G"], user="0:0")
    assert out == b"0\n"


async def test_unknown_user_or_group_fails(client: AgentPeer) -> None:
    for user in ("no-such-user-xyz", "nobody:no-such-group-xyz", ":0"):
        state, _, _ = await client.run(["true"], user=user)
        assert state["state"] == "failed", user
        assert state["error"]["code"] == "unknown_user"


@requires_root
async def test_agent_not_running_as_root_refuses_user_switching(
    agent_factory: AgentFactory,
) -> None:
    nobody = pwd.getpwnam("nobody")
    agent = agent_factory(user=nobody.pw_uid, python=GUEST_PYTHON)
    c = await agent.connect()
    try:
        with pytest.raises(AgentRequestError) as err:
            await c.call("start", exec_id=uuid.uuid4().hex, cmd=["id"], user="root")
        assert err.value.code == "forbidden"
        assert "not running as root" in err.value.message
        _, out, _ = await c.run(["id", "-u"], user="nobody")  # the agent's own user
        assert out.decode().strip() == str(nobody.pw_uid)
        _, out, _ = await c.run(["id", "-u"])
        assert out.decode().strip() == str(nobody.pw_uid)
    finally:
        await c.close()


def test_is_root_matches_environment() -> None:
    # Documents why the root-only tests above may be skipped.
    assert IS_ROOT in (True, False)
