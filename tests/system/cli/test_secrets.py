"""Secrets in the CLI (#16.11): ``-e KEY`` and ``--env-file`` keep them off the command
line, and no env value or stdin byte reaches a log line, at any level."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from execbus.cli.commands import merged_env
from execbus.cli.common import EnvFileError, env_entry, read_env_file
from execbus.testing.processes import child_env
from tests.system.cli.conftest import Execbus, runner

# -- the formats, offline --------------------------------------------------------


def test_env_entry_takes_a_bare_key_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("EB_TEST_TOKEN", "tok=en with spaces")
    monkeypatch.setenv("EB_TEST_EMPTY", "")
    assert env_entry("EB_TEST_TOKEN") == ("EB_TEST_TOKEN", "tok=en with spaces")
    assert env_entry("EB_TEST_EMPTY") == ("EB_TEST_EMPTY", "")
    assert env_entry("A=b=c") == ("A", "b=c")
    assert env_entry("A=") == ("A", "")
    monkeypatch.delenv("EB_TEST_UNSET", raising=False)
    with pytest.raises(argparse.ArgumentTypeError, match="EB_TEST_UNSET is not set"):
        env_entry("EB_TEST_UNSET")
    with pytest.raises(argparse.ArgumentTypeError, match="empty KEY") as caught:
        env_entry("=hunter2")
    assert "hunter2" not in str(caught.value)


def test_env_file_format(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EB_TEST_FROM_ENV", "from the environment")
    path = tmp_path / "app.env"
    path.write_bytes(
        b"\xef\xbb\xbf# a comment\n"  # a byte order mark, then a comment
        b"\n"
        b"   # an indented comment\n"
        b"PLAIN=value\n"
        b"  INDENTED=kept  \n"  # leading blanks go, the value is verbatim
        b"QUOTED=\"not unquoted\" 'nor this'\n"
        b"EXPANDED=$HOME ${HOME}\n"
        b"EQUALS=a=b=c\n"
        b"EMPTY=\n"
        b"HASH=#not a comment\n"
        b"CRLF=windows\r\n"
        b"EB_TEST_FROM_ENV\n"
        b"PLAIN=again"  # no final newline; a later KEY replaces an earlier one (merged_env)
    )
    entries = read_env_file(str(path))
    assert entries == [
        ("PLAIN", "value"),
        ("INDENTED", "kept  "),
        ("QUOTED", "\"not unquoted\" 'nor this'"),
        ("EXPANDED", "$HOME ${HOME}"),
        ("EQUALS", "a=b=c"),
        ("EMPTY", ""),
        ("HASH", "#not a comment"),
        ("CRLF", "windows"),
        ("EB_TEST_FROM_ENV", "from the environment"),
        ("PLAIN", "again"),
    ]
    other = tmp_path / "other.env"
    other.write_text("PLAIN=from other\nOTHER=1\n")
    assert merged_env([str(path), str(other)], [("OTHER", "from -e")])[0] == ("PLAIN", "from other")
    assert dict(merged_env([str(path), str(other)], [("OTHER", "from -e")]))["OTHER"] == "from -e"


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        (b"A=1\nhunter2 is my password\n", 2, "the name has whitespace"),
        (b"A=1\n\n=hunter2\n", 3, "no variable name before '='"),
        (b"KEY =hunter2\n", 1, "the name has whitespace"),
        (b"A=1\nB=hunter2\xff\n", 2, "not UTF-8"),
        (b"B=hunter2\x00\n", 1, "NUL"),
        (b"# ok\nEB_TEST_SURELY_UNSET\n", 2, "EB_TEST_SURELY_UNSET is not set in this environment"),
    ],
)
def test_env_file_errors_name_the_file_and_line_never_a_value(
    tmp_path: Path, content: bytes, line: int, why: str
) -> None:
    path = tmp_path / "bad.env"
    path.write_bytes(content)
    with pytest.raises(EnvFileError) as caught:
        read_env_file(str(path))
    message = str(caught.value)
    assert message.startswith(f"--env-file {path} line {line}: "), message
    assert why in message
    assert "hunter2" not in message


def test_an_unreadable_env_file(tmp_path: Path) -> None:
    with pytest.raises(EnvFileError, match="cannot read it: No such file or directory"):
        read_env_file(str(tmp_path / "missing.env"))


def test_env_file_errors_through_the_cli(tmp_path: Path) -> None:
    cli = runner(child_env(EXECBUS_AMQP_URL="amqp://guest:guest@127.0.0.1:1/"))
    path = tmp_path / "bad.env"
    path.write_text("GOOD=1\nsecret value hunter2\n")
    missing = tmp_path / "missing.env"
    for args, says in (
        (("--env-file", str(path)), f"--env-file {path} line 2: not KEY=VALUE or KEY"),
        (("--env-file", str(missing)), f"--env-file {missing}: cannot read it"),
        (("-e", "EB_TEST_SURELY_UNSET"), "EB_TEST_SURELY_UNSET is not set in this environment"),
    ):
        done = cli("run", "--agent", "local", *args, "--", "true")
        err = done.stderr.decode()
        assert done.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("execbus run: "), err
        assert says in err
        assert "hunter2" not in err and "Traceback" not in err


# -- a real run at debug level ------------------------------------------------


def spellings(secret: bytes) -> list[bytes]:
    """``secret`` as it could appear in a log: plain, JSON-escaped, and base64 whatever
    its offset in the encoded data (the part of each alignment that does not depend on
    the bytes around it)."""
    forms = [secret, json.dumps(secret.decode()).encode()[1:-1]]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret)
        first = -(-offset // 3)  # the first 3-byte group wholly inside the secret
        last = (offset + len(secret) - 3) // 3  # and the last
        stable = encoded[4 * first : 4 * (last + 1)]
        forms += [stable, stable.replace(b"+", b"-").replace(b"/", b"_")]
    return forms


def assert_no_secret(where: str, text: bytes, secrets: list[bytes]) -> None:
    for secret in secrets:
        for form in spellings(secret):
            assert form not in text, f"a secret ({form!r}) is in {where}"


@pytest.mark.integration
def test_env_values_and_stdin_never_reach_a_log_line(
    cli_env: dict[str, str], local_worker: Any, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    values = {
        "ON_THE_LINE": f"cmdline-secret-{tag}",
        "FROM_ENV": f"environ-secret-{tag}",
        "IN_FILE": f"file-secret-{tag}",
        "FILE_FROM_ENV": f"file-environ-secret-{tag}",
    }
    stdin = f"stdin-secret-{tag}\n".encode() * 100
    env_file = tmp_path / "secrets.env"
    env_file.write_text(f"# secrets\nIN_FILE={values['IN_FILE']}\nFILE_FROM_ENV\n")
    env = {
        **cli_env,
        "EXECBUS_LOG_LEVEL": "debug",
        "FROM_ENV": values["FROM_ENV"],
        "FILE_FROM_ENV": values["FILE_FROM_ENV"],
    }
    # The command proves it got them, without printing them: their hashes.
    script = (
        'printf %s "$ON_THE_LINE" | sha256sum; printf %s "$FROM_ENV" | sha256sum; '
        'printf %s "$IN_FILE" | sha256sum; printf %s "$FILE_FROM_ENV" | sha256sum; sha256sum'
    )
    expected = "".join(
        f"{hashlib.sha256(data).hexdigest()}  -\n"
        for data in [*(v.encode() for v in values.values()), stdin]
    ).encode()
    secrets = [v.encode() for v in values.values()] + [f"stdin-secret-{tag}".encode()]
    execbus: Execbus = runner(env)
    common = ["--agent", "local", "-e", f"ON_THE_LINE={values['ON_THE_LINE']}", "-e", "FROM_ENV"]
    common += ["--env-file", str(env_file), "-i"]

    streamed = execbus("run", *common, "--", "sh", "-c", script, input=stdin)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == expected
    assert_no_secret("the CLI's stderr", streamed.stderr, secrets)

    as_json = execbus("run", "--json", *common, "--", "sh", "-c", script, input=stdin)
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert base64.b64decode(record["exit"]["stdout"]) == expected
    assert sorted(record["env_keys"]) == sorted(values)
    assert_no_secret("the CLI's stderr", as_json.stderr, secrets)
    assert_no_secret("the --json record", as_json.stdout, secrets)

    assert_no_secret("the worker's debug log", local_worker.log_path.read_bytes(), secrets)


@pytest.mark.integration
def test_debug_level_shows_reconnects_but_no_frames(cli_env: dict[str, str]) -> None:
    """At debug, aio-pika's info lines (reconnects) show, never aiormq's frame dumps;
    the error is still the last line, and there is no traceback."""
    env = {**cli_env, "EXECBUS_LOG_LEVEL": "debug", "EXECBUS_AMQP_URL": "amqp://u:p@127.0.0.1:1/"}
    done = runner(env)("ps", "--agent", "local")
    err = done.stderr.decode()
    assert done.returncode == 125 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("execbus: cannot connect to the broker"), err
    assert "aiormq" not in err
