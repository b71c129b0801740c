"""What the agent tells its lifeline: nothing for an exec in a cgroup of its life."""

from __future__ import annotations

import pytest

from execbus.agent.lifeline import Lifeline

LIFE = "/sys/fs/cgroup/execbus/a4026531836-812-9310024"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The lines each send would write to the lifeline (none is started)."""
    lines: list[list[str]] = []
    monkeypatch.setattr(Lifeline, "_send", lambda self, new: lines.append(new))
    return lines


def test_an_exec_contained_in_a_cgroup_of_the_life_costs_the_lifeline_nothing(
    sent: list[list[str]],
) -> None:
    lifeline = Lifeline(None, LIFE)
    lifeline.register("e1", f"{LIFE}/e1", [])
    lifeline.release("e1")
    assert sent == []


def test_process_groups_and_other_cgroups_are_registered_and_released(
    sent: list[list[str]],
) -> None:
    lifeline = Lifeline(None, LIFE)
    lifeline.register("e1", f"{LIFE}/e1", [(42, "7")])  # a container's process group
    lifeline.register("e2", "/sys/fs/cgroup/elsewhere/e2", [])
    lifeline.register("e1", f"{LIFE}/e1", [(42, "7")])  # known: not again
    lifeline.release("e1")
    assert sent == [
        ["+ e1 g 42 7"],
        ["+ e2 c /sys/fs/cgroup/elsewhere/e2"],
        ["- e1"],
    ]


def test_without_cgroups_every_registration_is_sent(sent: list[list[str]]) -> None:
    lifeline = Lifeline(None)
    lifeline.register("e1", None, [(42, None)])
    assert sent == [["+ e1 g 42 -"]]
