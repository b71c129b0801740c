"""ExecRegistry: every transition, every conflict, GC and the record cap."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from execbus.errors import Conflict, LimitExceeded, NotFound
from execbus.registry import ExecRecord, ExecRegistry, RegistryLimits, StartAction
from execbus.registry.registry import config_digest
from execbus.wire import ErrorInfo, ExecConfig, ExecState, ExitInfo, dump

T0 = 1_700_000_000.0
ERR = ErrorInfo(code="agent_unavailable", message="agent down")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cfg(container: str = "", *, tty: bool = False, cmd: str = "true") -> ExecConfig:
    return ExecConfig(container_id=container, cmd=[cmd], tty=tty)


def exit_info(code: int = 0, **kw: Any) -> ExitInfo:
    return ExitInfo(exit_code=code, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> ExecRegistry:
    return ExecRegistry(
        "agent-1", RegistryLimits(max_records=10, retention=100.0, created_ttl=50.0), clock
    )


def make(reg: ExecRegistry, state: str, exec_id: str = "e1", **kw: object) -> ExecRecord:
    """A record driven into ``state``: created, starting, running, exited or failed."""
    record, _ = reg.create(cfg(**kw), exec_id)  # type: ignore[arg-type]
    if state == "created":
        return record
    reg.begin_start(exec_id)
    if state == "starting":
        return record
    if state == "failed":
        reg.mark_failed(exec_id, ERR)
        return record
    reg.mark_running(exec_id, pid=100)
    if state == "exited":
        reg.notify_exit(exec_id, exit_info(3))
    return record


# -- create ------------------------------------------------------------------


def test_create_with_generated_id(reg: ExecRegistry, clock: FakeClock) -> None:
    record, created = reg.create(cfg())
    assert created is True
    assert re.fullmatch(r"[0-9a-f]{32}", record.exec_id)
    assert record.agent == "agent-1"
    assert record.state is ExecState.CREATED
    assert record.starting is False
    assert record.created_at == clock.now
    assert record.instance
    assert reg.get(record.exec_id) is record
    assert len(reg) == 1


def test_generated_ids_and_instances_are_distinct(reg: ExecRegistry) -> None:
    a, _ = reg.create(cfg())
    b, _ = reg.create(cfg())
    assert a.exec_id != b.exec_id
    assert a.instance != b.instance


def test_create_with_caller_id_and_instance(reg: ExecRegistry) -> None:
    record, created = reg.create(cfg(), "job-7", instance="inst-1")
    assert created is True
    assert record.exec_id == "job-7"
    assert record.instance == "inst-1"


def test_create_is_idempotent_for_the_same_config(reg: ExecRegistry) -> None:
    first, _ = reg.create(cfg("c1"), "job")
    again, created = reg.create(ExecConfig(container_id="c1", cmd=["true"], tty=False), "job")
    assert created is False
    assert again is first
    assert len(reg) == 1


def test_idempotent_create_returns_the_record_in_any_state(reg: ExecRegistry) -> None:
    record = make(reg, "exited", "job")
    again, created = reg.create(cfg(), "job")
    assert (again, created) == (record, False)
    assert again.state is ExecState.EXITED


def test_create_with_a_different_config_conflicts(reg: ExecRegistry) -> None:
    reg.create(cfg(cmd="true"), "job")
    with pytest.raises(Conflict, match="exec 'job' already exists with a different config"):
        reg.create(cfg(cmd="false"), "job")
    assert reg.get("job").config.cmd == ["true"]


def test_idempotent_create_works_on_a_full_registry(clock: FakeClock) -> None:
    reg = ExecRegistry("a", RegistryLimits(max_records=1), clock)
    record, _ = reg.create(cfg(), "job")
    assert reg.create(cfg(), "job") == (record, False)


# -- begin_start -------------------------------------------------------------


def test_begin_start_spawns(reg: ExecRegistry) -> None:
    reg.create(cfg(), "e1")
    decision = reg.begin_start("e1")
    assert decision.action is StartAction.SPAWN
    assert decision.record is reg.get("e1")
    assert decision.record.starting is True
    assert decision.record.state is ExecState.CREATED


@pytest.mark.parametrize("state", ["starting", "running", "exited", "failed"])
def test_any_later_start_replays(reg: ExecRegistry, state: str) -> None:
    """The exec id is the idempotency key: a caller that re-publishes a start
    as a new message gets the exec, never a second spawn."""
    record = make(reg, state)
    before = (record.state, record.starting, record.pid, record.exit, record.error)
    decision = reg.begin_start("e1")
    assert decision.action is StartAction.REPLAY
    assert decision.record is record
    assert (record.state, record.starting, record.pid, record.exit, record.error) == before


def test_a_start_spawns_once(reg: ExecRegistry) -> None:
    reg.create(cfg(), "e1")
    assert reg.begin_start("e1").action is StartAction.SPAWN
    assert reg.begin_start("e1").action is StartAction.REPLAY
    reg.mark_running("e1", 1)
    assert reg.begin_start("e1").action is StartAction.REPLAY
    reg.notify_exit("e1", exit_info())
    assert reg.begin_start("e1").action is StartAction.REPLAY


def test_repeated_create_ignores_a_console_size_set_at_start(reg: ExecRegistry) -> None:
    record, _ = reg.create(cfg(), "e1")
    record.config = record.config.model_copy(update={"console_size": {"width": 9, "height": 9}})
    assert reg.create(cfg(), "e1") == (record, False)
    with pytest.raises(Conflict, match="different config"):
        reg.create(cfg(cmd="other"), "e1")


def test_a_record_rebuilt_with_redacted_env_is_recognised_by_its_digest(
    reg: ExecRegistry,
) -> None:
    """An agent's journal keeps env values redacted; the meta carries the config's digest."""
    original = ExecConfig(cmd=["true"], env=["TOKEN=s3cret"])
    redacted = ExecConfig(cmd=["true"], env=["TOKEN=<redacted>"])
    rebuilt = ExecRecord("e1", "agent-1", redacted, "i", 0.0, config_digest=config_digest(original))
    reg.adopt(rebuilt)
    assert reg.create(original, "e1") == (rebuilt, False)
    with pytest.raises(Conflict, match="different config"):
        reg.create(ExecConfig(cmd=["true"], env=["TOKEN=other"]), "e1")


def test_begin_start_unknown_exec(reg: ExecRegistry) -> None:
    with pytest.raises(NotFound, match="no exec 'nope' on agent 'agent-1'"):
        reg.begin_start("nope")


# -- abort_start -------------------------------------------------------------


def test_abort_start_allows_a_new_start(reg: ExecRegistry) -> None:
    record = make(reg, "starting")
    reg.abort_start("e1")
    assert record.state is ExecState.CREATED
    assert record.starting is False
    assert reg.begin_start("e1").action is StartAction.SPAWN


@pytest.mark.parametrize("state", ["running", "exited", "failed"])
def test_abort_start_after_an_outcome_changes_nothing(reg: ExecRegistry, state: str) -> None:
    record = make(reg, state)
    before = (record.state, record.starting)
    reg.abort_start("e1")
    assert (record.state, record.starting) == before
    assert reg.begin_start("e1").action is StartAction.REPLAY


def test_abort_start_unknown_exec(reg: ExecRegistry) -> None:
    with pytest.raises(NotFound):
        reg.abort_start("nope")


# -- mark_running ------------------------------------------------------------


def test_mark_running_from_starting(reg: ExecRegistry, clock: FakeClock) -> None:
    make(reg, "starting")
    clock.advance(5)
    record = reg.mark_running("e1", pid=4242)
    assert record.state is ExecState.RUNNING
    assert record.starting is False
    assert record.pid == 4242
    assert record.started_at == clock.now
    assert not record.finished


def test_mark_running_with_explicit_time_and_no_pid(reg: ExecRegistry) -> None:
    make(reg, "starting")
    record = reg.mark_running("e1", pid=None, started_at=123.0)
    assert record.started_at == 123.0
    assert record.pid is None


def test_mark_running_from_created(reg: ExecRegistry) -> None:
    make(reg, "created")
    assert reg.mark_running("e1", 1).state is ExecState.RUNNING


@pytest.mark.parametrize("state", ["running", "exited", "failed"])
def test_mark_running_only_from_created(reg: ExecRegistry, state: str) -> None:
    record = make(reg, state)
    with pytest.raises(Conflict, match=f"exec 'e1' is {state}, not created"):
        reg.mark_running("e1", 999)
    assert record.state.value == state
    assert record.pid != 999


def test_mark_running_unknown_exec(reg: ExecRegistry) -> None:
    with pytest.raises(NotFound):
        reg.mark_running("nope", 1)


# -- mark_failed -------------------------------------------------------------


@pytest.mark.parametrize("state", ["created", "starting", "running"])
def test_mark_failed(reg: ExecRegistry, clock: FakeClock, state: str) -> None:
    record = make(reg, state)
    clock.advance(7)
    assert reg.mark_failed("e1", ERR) is True
    assert record.state is ExecState.FAILED
    assert record.finished
    assert record.starting is False
    assert record.error == ERR
    assert record.finished_at == clock.now
    assert record.exit is None


@pytest.mark.parametrize("state", ["exited", "failed"])
def test_mark_failed_when_finished_is_a_no_op(reg: ExecRegistry, state: str) -> None:
    record = make(reg, state)
    before = (record.state, record.error, record.exit, record.finished_at)
    other = ErrorInfo(code="agent_lost", message="gone")
    assert reg.mark_failed("e1", other) is False
    assert (record.state, record.error, record.exit, record.finished_at) == before


def test_a_failed_start_is_never_left_running(reg: ExecRegistry) -> None:
    make(reg, "starting")
    reg.mark_failed("e1", ERR)
    with pytest.raises(Conflict):
        reg.mark_running("e1", 1)
    with pytest.raises(Conflict, match="not running"):
        reg.check_running("e1")


# -- notify_exit -------------------------------------------------------------


def test_notify_exit_from_running(reg: ExecRegistry, clock: FakeClock) -> None:
    record = make(reg, "running")
    clock.advance(3)
    info = exit_info(137, signal="SIGKILL", stdout=b"out")
    assert reg.notify_exit("e1", info) is True
    assert record.state is ExecState.EXITED
    assert record.exit == info
    assert record.finished_at == clock.now
    assert record.error is None
    assert record.finished


def test_duplicate_exit_is_ignored(reg: ExecRegistry) -> None:
    record = make(reg, "running")
    first = exit_info(1)
    assert reg.notify_exit("e1", first) is True
    finished_at = record.finished_at
    assert reg.notify_exit("e1", exit_info(2)) is False
    assert record.exit == first
    assert record.finished_at == finished_at


def test_exit_after_failure_is_ignored(reg: ExecRegistry) -> None:
    record = make(reg, "failed")
    assert reg.notify_exit("e1", exit_info(0)) is False
    assert record.state is ExecState.FAILED
    assert record.exit is None


def test_exit_of_a_never_started_exec_conflicts(reg: ExecRegistry) -> None:
    record = make(reg, "created")
    with pytest.raises(Conflict, match="exec 'e1' was never started"):
        reg.notify_exit("e1", exit_info(0))
    assert record.state is ExecState.CREATED


def test_exit_while_starting_is_accepted(reg: ExecRegistry) -> None:
    # A fast process may end before the worker recorded it as running.
    record = make(reg, "starting")
    started = datetime.fromtimestamp(T0 - 1, UTC)
    assert reg.notify_exit("e1", exit_info(0, started_at=started)) is True
    assert record.state is ExecState.EXITED
    assert record.starting is False
    assert record.started_at == T0 - 1


def test_exit_keeps_the_recorded_start_time(reg: ExecRegistry) -> None:
    record = make(reg, "running")
    started_at = record.started_at
    reg.notify_exit("e1", exit_info(0, started_at=datetime.fromtimestamp(1.0, UTC)))
    assert record.started_at == started_at


def test_notify_exit_unknown_exec(reg: ExecRegistry) -> None:
    with pytest.raises(NotFound):
        reg.notify_exit("nope", exit_info())


# -- resize / running checks -------------------------------------------------


def test_resize_needs_a_tty(reg: ExecRegistry) -> None:
    make(reg, "running", tty=False)
    with pytest.raises(Conflict, match="exec 'e1' has no TTY; resize needs tty=true"):
        reg.check_resizable("e1")


@pytest.mark.parametrize(
    ("state", "shown"),
    [("created", "created"), ("starting", "created"), ("exited", "exited"), ("failed", "failed")],
)
def test_resize_needs_a_running_exec(reg: ExecRegistry, state: str, shown: str) -> None:
    make(reg, state, tty=True)
    with pytest.raises(Conflict, match=f"exec 'e1' is {shown}, not running"):
        reg.check_resizable("e1")


def test_resize_of_a_running_tty_exec(reg: ExecRegistry) -> None:
    record = make(reg, "running", tty=True)
    assert reg.check_resizable("e1") is record


def test_check_running(reg: ExecRegistry) -> None:
    record = make(reg, "running")
    assert reg.check_running("e1") is record
    reg.notify_exit("e1", exit_info())
    with pytest.raises(Conflict, match="exec 'e1' is exited, not running"):
        reg.check_running("e1")
    with pytest.raises(NotFound):
        reg.check_running("nope")
    with pytest.raises(NotFound):
        reg.check_resizable("nope")


# -- remove ------------------------------------------------------------------


@pytest.mark.parametrize("state", ["running", "starting"])
def test_remove_of_a_live_exec_conflicts(reg: ExecRegistry, state: str) -> None:
    make(reg, state)
    with pytest.raises(Conflict, match="exec 'e1' is running; stop it first or use force"):
        reg.remove("e1")
    assert reg.find("e1") is not None


@pytest.mark.parametrize("state", ["created", "exited", "failed"])
def test_remove(reg: ExecRegistry, state: str) -> None:
    record = make(reg, state, container="c1")
    assert reg.remove("e1") is record
    assert reg.find("e1") is None
    assert len(reg) == 0
    assert reg.list_for_container("c1") == []
    with pytest.raises(NotFound):
        reg.get("e1")
    with pytest.raises(NotFound, match="no exec 'e1' on agent 'agent-1'"):
        reg.remove("e1")


def test_remove_then_create_again_is_a_new_record(reg: ExecRegistry) -> None:
    old = make(reg, "exited")
    reg.remove("e1")
    new, created = reg.create(cfg(), "e1")
    assert created is True
    assert new is not old
    assert new.instance != old.instance
    assert new.state is ExecState.CREATED


# -- adopt -------------------------------------------------------------------


def record_of(
    exec_id: str, container: str = "", state: ExecState = ExecState.RUNNING
) -> ExecRecord:
    return ExecRecord(
        exec_id=exec_id,
        agent="agent-1",
        config=cfg(container),
        instance=f"inst-{exec_id}",
        created_at=T0 - 10,
        state=state,
        pid=7,
        started_at=T0 - 9,
    )


def test_adopt_inserts(reg: ExecRegistry) -> None:
    record = record_of("r1", "c1")
    reg.adopt(record)
    assert reg.get("r1") is record
    assert reg.list_for_container("c1") == [record]


def test_adopt_replaces_and_moves_between_containers(reg: ExecRegistry) -> None:
    make(reg, "created", "r1", container="old")
    replacement = record_of("r1", "new")
    reg.adopt(replacement)
    assert reg.get("r1") is replacement
    assert len(reg) == 1
    assert reg.list_for_container("old") == []
    assert reg.list_for_container("new") == [replacement]
    assert "old" not in reg._by_container


def test_adopt_ignores_the_cap(clock: FakeClock) -> None:
    reg = ExecRegistry("a", RegistryLimits(max_records=2), clock)
    for i in range(5):
        reg.adopt(record_of(f"r{i}"))
    assert len(reg) == 5
    with pytest.raises(LimitExceeded):
        reg.create(cfg())


# -- sweep -------------------------------------------------------------------


def test_sweep_collects_finished_after_retention(reg: ExecRegistry, clock: FakeClock) -> None:
    make(reg, "exited", "ex")
    make(reg, "failed", "fa")
    clock.advance(99.9)
    assert reg.sweep() == []
    clock.advance(0.1)
    assert sorted(reg.sweep()) == ["ex", "fa"]
    assert len(reg) == 0


def test_sweep_collects_created_after_ttl(reg: ExecRegistry, clock: FakeClock) -> None:
    make(reg, "created", "cr")
    clock.advance(49.9)
    assert reg.sweep() == []
    clock.advance(0.1)
    assert reg.sweep() == ["cr"]


def test_sweep_never_collects_starting_or_running(reg: ExecRegistry, clock: FakeClock) -> None:
    make(reg, "starting", "st")
    make(reg, "running", "ru")
    clock.advance(10**9)
    assert reg.sweep() == []
    assert {r.exec_id for r in reg} == {"st", "ru"}


def test_retention_counts_from_finish_not_create(reg: ExecRegistry, clock: FakeClock) -> None:
    make(reg, "running", "ru")
    clock.advance(1000)
    reg.notify_exit("ru", exit_info())
    clock.advance(50)
    assert reg.sweep() == []
    clock.advance(50)
    assert reg.sweep() == ["ru"]


def test_sweep_with_explicit_now(reg: ExecRegistry) -> None:
    make(reg, "exited", "ex")
    make(reg, "created", "cr")
    assert reg.sweep(now=T0 + 60) == ["cr"]
    assert reg.sweep(now=T0 + 100) == ["ex"]


def test_sweep_keeps_the_container_index_clean(reg: ExecRegistry, clock: FakeClock) -> None:
    make(reg, "exited", "a", container="c1")
    make(reg, "running", "b", container="c2")
    clock.advance(1000)
    reg.sweep()
    assert set(reg._by_container) == {"c2"}


# -- cap ---------------------------------------------------------------------


def test_full_registry_raises_a_clear_error(clock: FakeClock) -> None:
    reg = ExecRegistry("agent-9", RegistryLimits(max_records=2), clock)
    reg.create(cfg())
    reg.create(cfg())
    with pytest.raises(LimitExceeded) as info:
        reg.create(cfg())
    msg = info.value.message
    assert "registry of agent 'agent-9' holds 2 execs, the limit is 2" in msg
    assert "remove finished execs or retry later" in msg
    assert len(reg) == 2


def test_a_sweep_that_frees_room_lets_create_succeed(clock: FakeClock) -> None:
    reg = ExecRegistry("a", RegistryLimits(max_records=2, retention=10, created_ttl=10**6), clock)
    make(reg, "exited", "old")
    make(reg, "running", "live")
    with pytest.raises(LimitExceeded):
        reg.create(cfg())
    clock.advance(10)
    _, created = reg.create(cfg(), "new")
    assert created
    assert reg.find("old") is None
    assert {r.exec_id for r in reg} == {"live", "new"}


def test_expired_created_records_free_room(clock: FakeClock) -> None:
    reg = ExecRegistry("a", RegistryLimits(max_records=1, created_ttl=5), clock)
    reg.create(cfg(), "stale")
    clock.advance(5)
    reg.create(cfg(), "fresh")
    assert [r.exec_id for r in reg] == ["fresh"]


def test_remove_frees_room(clock: FakeClock) -> None:
    reg = ExecRegistry("a", RegistryLimits(max_records=1), clock)
    reg.create(cfg(), "one")
    reg.remove("one")
    assert reg.create(cfg(), "two")[1] is True


# -- lookups and listing -----------------------------------------------------


def test_find_and_get(reg: ExecRegistry) -> None:
    assert reg.find("nope") is None
    with pytest.raises(NotFound, match="no exec 'nope' on agent 'agent-1'"):
        reg.get("nope")
    record = make(reg, "created")
    assert reg.find("e1") is record


def test_list_and_filters(reg: ExecRegistry) -> None:
    a = make(reg, "created", "a", container="c1")
    b = make(reg, "running", "b", container="c1")
    c = make(reg, "exited", "c", container="c1")
    d = make(reg, "failed", "d", container="c2")
    e = make(reg, "starting", "e", container="")
    assert reg.list() == [a, b, c, d, e]
    assert list(reg) == [a, b, c, d, e]
    assert reg.list(include_finished=False) == [a, b, e]
    assert reg.list("c1") == [a, b, c]
    assert reg.list("c1", include_finished=False) == [a, b]
    assert reg.list_for_container("c1") == [a, b, c]
    assert reg.list_for_container("c2") == [d]
    assert reg.list_for_container("") == [e]
    assert reg.list_for_container("unknown") == []
    assert reg.list("c2", include_finished=False) == []


def test_iteration_is_safe_while_removing(reg: ExecRegistry) -> None:
    for i in range(3):
        make(reg, "created", f"x{i}")
    for record in reg:
        reg.remove(record.exec_id)
    assert len(reg) == 0


def test_counts_by_state(reg: ExecRegistry) -> None:
    assert reg.counts_by_state() == dict.fromkeys(ExecState, 0)
    make(reg, "created", "a")
    make(reg, "starting", "b")
    make(reg, "running", "c")
    make(reg, "running", "d")
    make(reg, "exited", "e")
    make(reg, "failed", "f")
    assert reg.counts_by_state() == {
        ExecState.CREATED: 2,
        ExecState.RUNNING: 2,
        ExecState.EXITED: 1,
        ExecState.FAILED: 1,
    }


def test_container_index_has_no_empty_buckets(reg: ExecRegistry) -> None:
    for i in range(3):
        make(reg, "created", f"a{i}", container="c1")
    make(reg, "exited", "b", container="c2")
    make(reg, "created", "h", container="")
    for i in range(3):
        reg.remove(f"a{i}")
        assert all(reg._by_container.values())
    reg.remove("b")
    reg.remove("h")
    assert reg._by_container == {}
    assert reg.list_for_container("c1") == []


def test_default_limits() -> None:
    limits = RegistryLimits()
    assert (limits.max_records, limits.retention, limits.created_ttl) == (100_000, 3600.0, 600.0)
    reg = ExecRegistry("a")
    assert reg.limits == limits
    assert reg.agent == "a"


# -- the public view ---------------------------------------------------------


def test_info_carries_env_keys_only(reg: ExecRegistry, clock: FakeClock) -> None:
    config = ExecConfig(
        container_id="c.1",
        cmd=["env"],
        env=["TOKEN=SECRET123", "PATH=/bin"],
        working_dir="/w",
        user="nobody",
        tty=True,
        privileged=True,
        timeout=9.0,
        labels={"k": "v"},
    )
    reg.create(config, "e1")
    reg.begin_start("e1")
    reg.mark_running("e1", 55)
    clock.advance(2)
    reg.notify_exit("e1", exit_info(0, stdout=b"TOKEN=..."))
    info = reg.get("e1").info()
    assert info.env_keys == ["TOKEN", "PATH"]
    assert "SECRET123" not in info.model_dump_json()
    assert b"SECRET123" not in dump(info)
    assert info.exec_id == "e1"
    assert info.agent == "agent-1"
    assert info.container_id == "c.1"
    assert info.state is ExecState.EXITED
    assert info.cmd == ["env"]
    assert (info.working_dir, info.user, info.tty, info.privileged) == ("/w", "nobody", True, True)
    assert info.timeout == 9.0
    assert info.labels == {"k": "v"}
    assert info.pid == 55
    assert info.created_at == datetime.fromtimestamp(T0, UTC)
    assert info.started_at == datetime.fromtimestamp(T0, UTC)
    assert info.finished_at == datetime.fromtimestamp(T0 + 2, UTC)
    assert info.exit is not None
    assert info.exit.exit_code == 0
    assert info.error is None


def test_info_of_created_and_failed_records(reg: ExecRegistry) -> None:
    created = make(reg, "created", "a").info()
    assert created.state is ExecState.CREATED
    assert created.started_at is None
    assert created.finished_at is None
    assert created.exit is None
    failed = make(reg, "failed", "b").info()
    assert failed.state is ExecState.FAILED
    assert failed.error == ERR
    assert failed.finished_at is not None
