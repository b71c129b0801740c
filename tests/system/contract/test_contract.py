"""The wire contract, checked from another language: a Node.js client against a real worker.

``tests/system/contract/contract.js`` (amqplib + ajv + @asyncapi/parser, pinned in
``package.json`` with a lockfile; ``make contract-deps`` installs them) speaks
raw AMQP to a real ``execbus worker`` driving a real ``execbus agent`` process,
validates every reply and event it receives against ``docs/schema`` with ajv
in strict mode, and prints a JSON report that these tests assert on. The Node
example in ``docs/integration.md`` is extracted and run here too.

Outside CI without ``node`` or ``node_modules`` the tests skip with the reason;
under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
INTEGRATION_MD = ROOT / "docs" / "integration.md"


def node_binary() -> str:
    """The ``node`` executable with the suite's packages installed, or skip/fail with why."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed (apt-get install nodejs npm)"
    elif not (NODE_MODULES / "amqplib").is_dir() or not (NODE_MODULES / "ajv").is_dir():
        missing = f"{NODE_MODULES} is missing: run `make contract-deps` (npm ci)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Node.js contract suite cannot run under CI: {missing}")
        pytest.skip(missing)
    assert node is not None
    return node


async def run_node(
    *args: str, env: dict[str, str], timeout: float, cwd: Path = HERE
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"node timed out: {err.decode()[-3000:]}") from None
    assert proc.returncode is not None
    return proc.returncode, out, err


def runs(marker: Path) -> int:
    """How many times a counted command ran (one line per run)."""
    return marker.read_text().count("ran\n") if marker.exists() else 0


def failures(report: dict[str, Any]) -> str:
    """What went wrong, short enough for an assertion message."""
    lines = [f"fatal: {report['fatal']}"] if report.get("fatal") else []
    lines += [f"{c['name']}: {c['error']}" for c in report.get("checks", []) if not c["ok"]]
    lines += [f"schema violation: {json.dumps(v)[:1500]}" for v in report.get("violations", [])[:5]]
    lines += [f"schema: {e}" for e in report.get("schemas", {}).get("errors", [])]
    lines += [f"asyncapi: {d}" for d in report.get("asyncapi", {}).get("diagnostics", [])]
    return "\n".join(lines)


def test_schemas_compile_strictly_and_asyncapi_parses_clean() -> None:
    """Every docs/schema/*.json compiles under ajv strict mode; the AsyncAPI parser is silent."""
    node = node_binary()
    result = subprocess.run(
        [node, str(HERE / "schemas.js"), str(ROOT / "docs")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    report = json.loads(result.stdout)
    assert report["ok"], json.dumps(report, indent=2)[-4000:]
    assert result.returncode == 0
    schema_files = sorted(p.name for p in (ROOT / "docs" / "schema").glob("*.json"))
    assert report["compiled"] == schema_files
    assert report["asyncapi"]["diagnostics"] == [] and report["asyncapi"]["version"] == "3.1.0"
    assert "execRun" in report["asyncapi"]["operations"]


@pytest.fixture
def contract_worker(start_agent: Any, start_worker: Any) -> str:
    """A real worker driving a real agent process named ``c1``."""
    agent = start_agent("c1")
    worker = start_worker("--agent", f"c1={agent.address}")
    worker.wait_owner("c1")
    return "c1"


@pytest.mark.integration
@pytest.mark.timeout(240)
async def test_node_contract_suite(
    amqp_url: str, namespace: str, contract_worker: str, tmp_path: Path
) -> None:
    node = node_binary()
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        "EXECBUS_AMQP_URL": amqp_url,
        "EXECBUS_NAMESPACE": namespace,
        "CONTRACT_AGENT": contract_worker,
        "CONTRACT_MARKER_DIR": str(markers),
        "CONTRACT_DOCS_DIR": str(ROOT / "docs"),
    }
    code, out, err = await run_node(node, str(HERE / "contract.js"), env=env, timeout=220)
    assert out, err.decode()[-3000:]
    report = json.loads(out)
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2))
    assert report["ok"], failures(report) + "\n" + err.decode()[-2000:]
    assert code == 0

    names = {c["name"] for c in report["checks"]}
    assert {
        "run",
        "base64_alphabets",
        "retry_finished",
        "retry_running",
        "conflict",
        "create_start_inspect_list_remove",
        "detach_and_signals",
        "stdin",
        "tty_resize",
        "timeout",
        "output_limit",
        "event_order",
        "invalid_requests",
    } <= names
    # Every reply and event was validated (and nothing failed validation: report["ok"]).
    validated = report["validated"]
    assert validated["replies"] > 150 and validated["events"] > 600, validated
    assert validated["rejected_requests"] == 3  # the schemas refuse what the worker refuses
    assert report["violations"] == []
    # The command of each retried exec ran exactly once (side-effect files).
    for name, path in report["markers"].items():
        assert runs(Path(path)) == 1, f"{name} ran {runs(Path(path))} times"
    assert set(report["markers"]) == {"retry_finished", "retry_running", "conflict", "create_start"}
    rounds = next(c for c in report["checks"] if c["name"] == "event_order")["info"]["rounds"]
    assert len(rounds) >= 3 and all(r["execs"] == 50 and r["out_of_order"] == 0 for r in rounds)
    # At least once: a repeated event keeps its event_id and its content (its time aside).
    for dup in report["duplicate_events"]:
        first, again = (
            {key: value for key, value in dup[which].items() if key != "time"}
            for which in ("first", "event")
        )
        assert first == again, dup


def integration_md_node_example() -> str:
    """The one ```js block of docs/integration.md."""
    blocks = re.findall(r"```js\n(.*?)```", INTEGRATION_MD.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/integration.md should hold exactly one ```js block"
    return blocks[0]


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_integration_md_node_example_runs(
    amqp_url: str, namespace: str, contract_worker: str, tmp_path: Path
) -> None:
    """The Node.js program in docs/integration.md, as printed, against a real worker."""
    node = node_binary()
    script = tmp_path / "run.js"
    script.write_text(integration_md_node_example())
    env = {
        "EXECBUS_AMQP_URL": amqp_url,
        "EXECBUS_NAMESPACE": namespace,
        "NODE_PATH": str(NODE_MODULES),  # `npm install amqplib`, as the doc says
    }
    cases = [
        (["sh", "-c", "echo hi; echo oops >&2; exit 3"], 3, b"hi\n", "event exec.exited"),
        (
            ["sh", "-c", r"printf '\373\377\277'; printf 'ab?'"],
            0,
            b"\xfb\xff\xbfab?",
            "exec.exited",
        ),
        (["/no/such/binary"], 127, b"", "event exec.failed"),
    ]
    for cmd, want_code, want_out, want_err in cases:
        code, out, err = await run_node(
            node, str(script), contract_worker, *cmd, env=env, timeout=40, cwd=tmp_path
        )
        assert (code, out) == (want_code, want_out), err.decode()
        assert want_err in err.decode(), err.decode()
    code, out, err = await run_node(
        node, str(script), "ghost", "true", env=env, timeout=40, cwd=tmp_path
    )
    assert code == 125 and "unknown_agent" in err.decode(), err.decode()
