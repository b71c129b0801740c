"""Finished records are compacted: the same public view from a fraction of the memory."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from datetime import UTC, datetime

import pytest

from execbus.errors import Conflict
from execbus.registry import ExecRecord, ExecRegistry, RegistryLimits
from execbus.wire import ErrorInfo, ExecConfig, ExitInfo

RICH = ExecConfig(
    container_id="web/1@x:y",
    cmd=["sh", "-c", "echo 'é' \"$X\""],
    env=["X=secret=value", "EMPTY="],
    working_dir="/srv",
    user="1000:1000",
    tty=True,
    console_size={"width": 120, "height": 40},
    timeout=2.5,
    output_limit=123,
    labels={"team": "ci", "job": "42"},
)
EXIT = ExitInfo(
    exit_code=137,
    signal="SIGKILL",
    timed_out=True,
    started_at=datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC),
    finished_at=datetime(2026, 11, 28, 12, 0, 1, 654321, tzinfo=UTC),
    stdout=b"\x00\xffbinary\n",
    stderr=b"err",
    stdout_dropped=5,
    stderr_dropped=0,
)


def finished_record(registry: ExecRegistry, config: ExecConfig = RICH) -> ExecRecord:
    record, _ = registry.create(config, uuid.uuid4().hex)
    registry.begin_start(record.exec_id)
    registry.mark_running(record.exec_id, 4242)
    registry.notify_exit(record.exec_id, EXIT)
    return record


def test_compaction_keeps_the_public_view() -> None:
    registry = ExecRegistry("a1")
    record = finished_record(registry)
    before = record.info()
    record.compact()
    assert record.compacted
    assert record.info() == before
    assert record.config == RICH
    assert record.exit == EXIT
    assert record.container_id == RICH.container_id


def test_only_finished_records_are_compacted() -> None:
    registry = ExecRegistry("a1")
    record, _ = registry.create(RICH, "e1")
    record.compact()
    assert not record.compacted
    assert record.config is RICH


def test_failed_records_compact_with_their_error() -> None:
    registry = ExecRegistry("a1")
    record, _ = registry.create(RICH, "e1")
    registry.begin_start("e1")
    error = ErrorInfo(code="start_failed", message="no such file", exit_code=127)
    registry.mark_failed("e1", error)
    before = record.info()
    record.compact()
    assert record.info() == before and record.exit is None and record.error == error


def test_idempotent_create_and_conflict_still_work_on_compacted_records() -> None:
    registry = ExecRegistry("a1")
    record = finished_record(registry)
    record.compact()
    again, created = registry.create(RICH, record.exec_id)
    assert again is record and not created
    with pytest.raises(Conflict):
        registry.create(RICH.model_copy(update={"tty": False}), record.exec_id)


def _bytes_per_record(compact: bool, count: int = 2000) -> float:
    registry = ExecRegistry("a1", RegistryLimits(max_records=count + 1))
    config_json = b'{"cmd":["echo","hi"]}'
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            record = finished_record(registry, ExecConfig.model_validate_json(config_json))
            if compact:
                record.compact()
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - base) / count
    finally:
        tracemalloc.stop()


def test_a_compacted_record_takes_under_half_of_a_live_one() -> None:
    live, compacted = _bytes_per_record(False), _bytes_per_record(True)
    # 100,000 finished execs must fit the worker's 150 MiB budget with room to spare.
    assert compacted < 1024, compacted
    assert compacted < live / 2, (live, compacted)


def test_a_compacted_record_refuses_changes_to_what_it_packed() -> None:
    registry = ExecRegistry("a1")
    record = finished_record(registry)
    record.compact()
    with pytest.raises(ValueError, match="compacted"):
        record.config = RICH
    with pytest.raises(ValueError, match="compacted"):
        record.exit = EXIT
    assert record.exit == EXIT
