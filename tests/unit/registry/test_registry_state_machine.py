"""A stateful property test of ExecRegistry against a plain model of the lifecycle."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
)

from execbus.errors import Conflict, LimitExceeded, NotFound
from execbus.registry import ExecRecord, ExecRegistry, RegistryLimits, StartAction
from execbus.wire import ErrorInfo, ExecConfig, ExecState, ExitInfo

IDS = ["a", "b", "c", "d"]
CONTAINERS = ["", "c1", "c2"]
CMDS = ["true", "false"]
MAX_RECORDS = 4
RETENTION = 100.0
CREATED_TTL = 50.0
ERR = ErrorInfo(code="start_failed", message="boom")

containers = st.sampled_from(CONTAINERS)
cmds = st.sampled_from(CMDS)
ttys = st.booleans()


def config(container: str, cmd: str, tty: bool) -> ExecConfig:
    return ExecConfig(container_id=container, cmd=[cmd], tty=tty)


@dataclass
class Expected:
    """What the model believes about one record."""

    state: ExecState
    config: ExecConfig
    created_at: float
    starting: bool = False
    finished_at: float | None = None
    spawns: int = 0  # SPAWN decisions not undone by abort_start

    @property
    def finished(self) -> bool:
        return self.state in (ExecState.EXITED, ExecState.FAILED)


class RegistryMachine(RuleBasedStateMachine):
    # Ids that were created or adopted at some point (removed ones stay: NotFound paths).
    known = Bundle("known")

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.reg = ExecRegistry(
            "agent",
            RegistryLimits(max_records=MAX_RECORDS, retention=RETENTION, created_ttl=CREATED_TTL),
            clock=lambda: self.now,
        )
        self.model: dict[str, Expected] = {}
        self.allowed_size = MAX_RECORDS  # raised only by adopt

    # -- the model's own rules ------------------------------------------------

    def expired(self, now: float) -> set[str]:
        out = set()
        for exec_id, m in self.model.items():
            if m.finished:
                assert m.finished_at is not None
                if now - m.finished_at >= RETENTION:
                    out.add(exec_id)
            elif (
                m.state is ExecState.CREATED
                and not m.starting
                and now - m.created_at >= CREATED_TTL
            ):
                out.add(exec_id)
        return out

    def forget(self, ids: set[str]) -> None:
        for exec_id in ids:
            assert self.model[exec_id].state is not ExecState.RUNNING
            assert not self.model[exec_id].starting
            del self.model[exec_id]

    # -- rules ----------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.0, 1.0, 30.0, 50.0, 100.0, 500.0]), collect=st.booleans())
    def tick(self, seconds: float, collect: bool) -> None:
        self.now += seconds
        if collect:  # the worker's periodic collector
            self.sweep()

    # None (a generated id) is drawn rarely: the other rules mostly target ids from IDS.
    @rule(
        target=known,
        exec_id=st.sampled_from([None, *IDS]),
        container=containers,
        cmd=cmds,
        tty=ttys,
    )
    def create(
        self, exec_id: str | None, container: str, cmd: str, tty: bool
    ) -> str | MultipleResults[str]:
        cfg = config(container, cmd, tty)
        existing = self.model.get(exec_id) if exec_id else None
        if exec_id is not None and existing is not None:
            if existing.config != cfg:
                try:
                    self.reg.create(cfg, exec_id)
                except Conflict:
                    return exec_id
                raise AssertionError("a different config must conflict")
            record, created = self.reg.create(cfg, exec_id)
            assert created is False
            assert record.state is existing.state
            return exec_id
        size_before = len(self.model)
        if size_before >= MAX_RECORDS:
            expired = self.expired(self.now)
            if size_before - len(expired) >= MAX_RECORDS:
                try:
                    self.reg.create(cfg, exec_id)
                except LimitExceeded:
                    self.forget(expired)  # the refused create still swept
                    return multiple()
                raise AssertionError("a full registry must refuse a create")
            self.forget(expired)
        record, created = self.reg.create(cfg, exec_id)
        assert created is True
        assert len(self.reg) <= max(MAX_RECORDS, size_before)
        assert record.state is ExecState.CREATED
        self.model[record.exec_id] = Expected(ExecState.CREATED, cfg, self.now)
        return record.exec_id

    @rule(exec_id=known)
    def begin_start(self, exec_id: str) -> None:
        m = self.model.get(exec_id)
        if m is None:
            try:
                self.reg.begin_start(exec_id)
            except NotFound:
                return
            raise AssertionError("unknown exec must be NotFound")
        if m.starting or m.state is not ExecState.CREATED:
            # Any later start replays, whatever its request id: never a second spawn.
            decision = self.reg.begin_start(exec_id)
            assert decision.action is StartAction.REPLAY
            assert decision.record.state is m.state
            return
        decision = self.reg.begin_start(exec_id)
        assert decision.action is StartAction.SPAWN
        m.starting = True
        m.spawns += 1
        assert m.spawns == 1, "a start must never spawn twice"

    @rule(exec_id=known)
    def abort_start(self, exec_id: str) -> None:
        m = self.model.get(exec_id)
        if m is None:
            try:
                self.reg.abort_start(exec_id)
            except NotFound:
                return
            raise AssertionError("unknown exec must be NotFound")
        self.reg.abort_start(exec_id)
        if m.state is ExecState.CREATED:
            m.starting = False
            m.spawns = 0

    @rule(exec_id=known, pid=st.integers(1, 100))
    def mark_running(self, exec_id: str, pid: int) -> None:
        m = self.model.get(exec_id)
        if m is None or m.state is not ExecState.CREATED:
            try:
                self.reg.mark_running(exec_id, pid)
            except (NotFound, Conflict):
                return
            raise AssertionError("mark_running must refuse")
        record = self.reg.mark_running(exec_id, pid)
        assert record.pid == pid
        m.state = ExecState.RUNNING
        m.starting = False

    @rule(exec_id=known)
    def mark_failed(self, exec_id: str) -> None:
        m = self.model.get(exec_id)
        if m is None:
            try:
                self.reg.mark_failed(exec_id, ERR)
            except NotFound:
                return
            raise AssertionError("unknown exec must be NotFound")
        changed = self.reg.mark_failed(exec_id, ERR)
        assert changed is (not m.finished)
        if changed:
            m.state = ExecState.FAILED
            m.starting = False
            m.finished_at = self.now

    @rule(exec_id=known, code=st.integers(0, 255))
    def notify_exit(self, exec_id: str, code: int) -> None:
        m = self.model.get(exec_id)
        info = ExitInfo(exit_code=code)
        if m is None or (m.state is ExecState.CREATED and not m.starting):
            try:
                self.reg.notify_exit(exec_id, info)
            except (NotFound, Conflict):
                return
            raise AssertionError("notify_exit must refuse")
        changed = self.reg.notify_exit(exec_id, info)
        assert changed is (not m.finished)
        if changed:
            m.state = ExecState.EXITED
            m.starting = False
            m.finished_at = self.now

    @rule(exec_id=known)
    def remove(self, exec_id: str) -> None:
        m = self.model.get(exec_id)
        if m is None or m.state is ExecState.RUNNING or m.starting:
            try:
                self.reg.remove(exec_id)
            except (NotFound, Conflict):
                return
            raise AssertionError("remove must refuse")
        self.reg.remove(exec_id)
        del self.model[exec_id]

    @rule(
        target=known,
        exec_id=st.sampled_from(IDS),
        container=containers,
        state=st.sampled_from(list(ExecState)),
    )
    def adopt(self, exec_id: str, container: str, state: ExecState) -> str:
        finished = state in (ExecState.EXITED, ExecState.FAILED)
        record = ExecRecord(
            exec_id=exec_id,
            agent="agent",
            config=config(container, "true", False),
            instance=f"adopted-{exec_id}",
            created_at=self.now,
            state=state,
            pid=None if state is ExecState.CREATED else 1,
            started_at=None if state is ExecState.CREATED else self.now,
            finished_at=self.now if finished else None,
            exit=ExitInfo(exit_code=0) if state is ExecState.EXITED else None,
            error=ERR if state is ExecState.FAILED else None,
        )
        self.reg.adopt(record)
        self.model[exec_id] = Expected(
            state, record.config, self.now, finished_at=record.finished_at
        )
        self.allowed_size = max(self.allowed_size, len(self.model))
        return exec_id

    @rule()
    def sweep(self) -> None:
        expected = self.expired(self.now)
        removed = self.reg.sweep()
        assert len(removed) == len(set(removed))
        assert set(removed) == expected
        self.forget(expected)

    @rule(exec_id=known)
    def check_running(self, exec_id: str) -> None:
        m = self.model.get(exec_id)
        ok = m is not None and m.state is ExecState.RUNNING
        try:
            self.reg.check_running(exec_id)
        except (NotFound, Conflict):
            assert not ok
        else:
            assert ok

    # -- invariants -----------------------------------------------------------

    @invariant()
    def states_agree(self) -> None:
        assert len(self.reg) == len(self.model)
        for record in self.reg:
            m = self.model[record.exec_id]
            assert record.state is m.state
            assert record.starting is m.starting
            assert record.config == m.config

    @invariant()
    def records_are_consistent(self) -> None:
        for record in self.reg:
            assert not (record.state is ExecState.RUNNING and record.finished)
            assert not (record.starting and record.state is not ExecState.CREATED)
            if record.state is ExecState.EXITED:
                assert record.exit is not None
                assert record.finished_at is not None
            if record.state is ExecState.FAILED:
                assert record.error is not None
                assert record.finished_at is not None
            if not record.finished:
                assert record.exit is None
                assert record.error is None

    @invariant()
    def containers_agree(self) -> None:
        for container in CONTAINERS:
            listed = [r.exec_id for r in self.reg.list_for_container(container)]
            expected = {i for i, m in self.model.items() if m.config.container_id == container}
            assert len(listed) == len(set(listed))
            assert set(listed) == expected
        assert all(self.reg._by_container.values()), "no empty container buckets"
        assert set(self.reg._by_container) <= set(CONTAINERS)

    @invariant()
    def cap_holds(self) -> None:
        assert len(self.reg) <= self.allowed_size

    @invariant()
    def counts_agree(self) -> None:
        counts = self.reg.counts_by_state()
        assert sum(counts.values()) == len(self.model)
        for state in ExecState:
            assert counts[state] == sum(1 for m in self.model.values() if m.state is state)


RegistryMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=20, deadline=None, database=None
)
# A green run takes a few seconds; the long timeout only lets a failure finish shrinking
# (a 20-step counterexample can take a minute), instead of dying unexplained at 60 s.
TestRegistryMachine = pytest.mark.timeout(300)(RegistryMachine.TestCase)
