"""Settings from EXECBUS_* variables; bad values are ConfigErrors naming the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from execbus.errors import ConfigError, ErrorCode
from execbus.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without any EXECBUS_* variable from the outside world."""
    for name in list(os.environ):
        if name.upper().startswith("EXECBUS_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert s.namespace == "execbus"
    assert s.agents == []
    assert s.agent_token_file is None
    assert s.prefetch == 64
    assert s.publish_timeout == 10.0
    assert s.delivery_limit == 5
    assert s.max_message_bytes == 4 * 1024 * 1024
    assert s.registry_max_records == 100_000
    assert s.registry_retention == 3600.0
    assert s.registry_created_ttl == 600.0
    assert s.http_port is None
    assert s.worker_id is None
    assert s.log_level == "info"
    assert s.log_format == "text"


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "token"
    env = {
        "EXECBUS_AMQP_URL": "amqps://u:p@broker:5671/vh",
        "EXECBUS_NAMESPACE": "tenant-1",
        "EXECBUS_AGENT_TOKEN_FILE": str(token),
        "EXECBUS_PREFETCH": "7",
        "EXECBUS_PUBLISH_TIMEOUT": "2.5",
        "EXECBUS_DELIVERY_LIMIT": "3",
        "EXECBUS_MAX_MESSAGE_BYTES": "2048",
        "EXECBUS_REGISTRY_MAX_RECORDS": "10",
        "EXECBUS_REGISTRY_RETENTION": "0",
        "EXECBUS_REGISTRY_CREATED_TTL": "1.5",
        "EXECBUS_SWEEP_INTERVAL": "4",
        "EXECBUS_AGENT_CALL_TIMEOUT": "0.5",
        "EXECBUS_AGENT_RETRY_ATTEMPTS": "2",
        "EXECBUS_AGENT_RETRY_MAX_ELAPSED": "3",
        "EXECBUS_AGENT_HEARTBEAT": "0.25",
        "EXECBUS_SHUTDOWN_GRACE": "0",
        "EXECBUS_HTTP_PORT": "9100",
        "EXECBUS_HTTP_HOST": "0.0.0.0",
        "EXECBUS_WORKER_ID": "w-1",
        "EXECBUS_REQUEST_TIMEOUT": "12",
        "EXECBUS_LOG_LEVEL": "debug",
        "EXECBUS_LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.amqp_url == "amqps://u:p@broker:5671/vh"
    assert s.namespace == "tenant-1"
    assert s.agent_token_file == token
    assert s.prefetch == 7
    assert s.publish_timeout == 2.5
    assert s.delivery_limit == 3
    assert s.max_message_bytes == 2048
    assert s.registry_max_records == 10
    assert s.registry_retention == 0.0
    assert s.registry_created_ttl == 1.5
    assert s.sweep_interval == 4.0
    assert s.agent_call_timeout == 0.5
    assert s.agent_retry_attempts == 2
    assert s.agent_retry_max_elapsed == 3.0
    assert s.agent_heartbeat == 0.25
    assert s.shutdown_grace == 0.0
    assert s.http_port == 9100
    assert s.http_host == "0.0.0.0"
    assert s.worker_id == "w-1"
    assert s.request_timeout == 12.0
    assert s.log_level == "debug"
    assert s.log_format == "json"


@pytest.mark.parametrize(
    ("raw", "agents"),
    [
        ("local", ["local"]),
        (
            "a=unix:///run/a.sock,b=tcp://10.0.0.2:7000",
            ["a=unix:///run/a.sock", "b=tcp://10.0.0.2:7000"],
        ),
        (" a=local , b=vsock://3:5000 ,", ["a=local", "b=vsock://3:5000"]),
        (",,", []),
        ("", []),
        ("q=qga+unix:///var/run/qga.sock", ["q=qga+unix:///var/run/qga.sock"]),
    ],
)
def test_agents_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, agents: list[str]
) -> None:
    monkeypatch.setenv("EXECBUS_AGENTS", raw)
    assert load_settings().agents == agents


def test_agents_as_an_override_list() -> None:
    assert load_settings(agents=["a=local", "b=local"]).agents == ["a=local", "b=local"]
    assert load_settings(agents="a=local,b=local").agents == ["a=local", "b=local"]


def test_overrides_win_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_PREFETCH", "7")
    monkeypatch.setenv("EXECBUS_NAMESPACE", "from-env")
    s = load_settings(prefetch=9, namespace=None)
    assert s.prefetch == 9
    assert s.namespace == "from-env"


def test_unknown_execbus_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_NO_SUCH_THING", "1")
    assert load_settings().prefetch == 64


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.prefetch = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("EXECBUS_PREFETCH", "zero", "prefetch"),
        ("EXECBUS_PREFETCH", "0", "prefetch"),
        ("EXECBUS_PREFETCH", "10001", "prefetch"),
        ("EXECBUS_PUBLISH_TIMEOUT", "0", "publish_timeout"),
        ("EXECBUS_PUBLISH_TIMEOUT", "-1", "publish_timeout"),
        ("EXECBUS_DELIVERY_LIMIT", "0", "delivery_limit"),
        ("EXECBUS_MAX_MESSAGE_BYTES", "1023", "max_message_bytes"),
        ("EXECBUS_REGISTRY_MAX_RECORDS", "0", "registry_max_records"),
        ("EXECBUS_REGISTRY_RETENTION", "-1", "registry_retention"),
        ("EXECBUS_REGISTRY_CREATED_TTL", "0", "registry_created_ttl"),
        ("EXECBUS_SWEEP_INTERVAL", "0", "sweep_interval"),
        ("EXECBUS_AGENT_CALL_TIMEOUT", "soon", "agent_call_timeout"),
        ("EXECBUS_AGENT_RETRY_ATTEMPTS", "0", "agent_retry_attempts"),
        ("EXECBUS_AGENT_RETRY_MAX_ELAPSED", "0", "agent_retry_max_elapsed"),
        ("EXECBUS_AGENT_HEARTBEAT", "0", "agent_heartbeat"),
        ("EXECBUS_SHUTDOWN_GRACE", "-1", "shutdown_grace"),
        ("EXECBUS_HTTP_PORT", "65536", "http_port"),
        ("EXECBUS_HTTP_PORT", "-1", "http_port"),
        ("EXECBUS_REQUEST_TIMEOUT", "0", "request_timeout"),
        ("EXECBUS_LOG_LEVEL", "verbose", "log_level"),
        ("EXECBUS_LOG_FORMAT", "xml", "log_format"),
        ("EXECBUS_NAMESPACE", "a.b", "namespace"),
        ("EXECBUS_NAMESPACE", "", "namespace"),
        ("EXECBUS_NAMESPACE", "x" * 65, "namespace"),
        ("EXECBUS_NAMESPACE", "a*", "namespace"),
        ("EXECBUS_AMQP_URL", "http://broker", "amqp_url"),
        ("EXECBUS_AMQP_URL", "broker:5672", "amqp_url"),
    ],
)
def test_invalid_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    msg = info.value.message
    assert msg.startswith(f"invalid configuration: {field}: ")
    assert info.value.code is ErrorCode.INVALID


def test_bad_amqp_url_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_AMQP_URL", "http://user:SECRETPW@broker/")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "amqp_url: Value error, must start with amqp:// or amqps://" in info.value.message
    assert "SECRETPW" not in info.value.message


def test_invalid_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^invalid configuration: prefetch: "):
        load_settings(prefetch=0)


def test_several_invalid_values_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_PREFETCH", "0")
    monkeypatch.setenv("EXECBUS_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "prefetch: " in info.value.message
    assert "log_level: " in info.value.message


def test_settings_class_reads_the_environment_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_WORKER_ID", "direct")
    assert Settings().worker_id == "direct"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("created,started", ["created", "started"]),
        ("started", ["started"]),
        (" created , started ", ["created", "started"]),
        ("none", []),
        ("", []),
    ],
)
def test_lifecycle_events_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("EXECBUS_LIFECYCLE_EVENTS", value)
    assert load_settings().lifecycle_events == expected


def test_an_unknown_lifecycle_event_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_LIFECYCLE_EVENTS", "created,exited")
    with pytest.raises(ConfigError, match="lifecycle_events"):
        load_settings()
