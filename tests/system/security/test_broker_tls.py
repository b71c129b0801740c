"""TLS to the broker from the EXECBUS_AMQP_*_FILE settings, with a test PKI made by openssl
(``broker.py``; the worker passes the context on)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from execbus.broker import broker_tls_context
from execbus.errors import ConfigError
from execbus.settings import load_settings
from tests.system.security.support import Certs


def test_broker_tls_context(certs: Certs) -> None:
    url = "amqps://u:p@mq.example:5671/"
    assert broker_tls_context(url, None, None, None) is None  # aio-pika's default
    ctx = broker_tls_context(url, certs.pem("ca"), certs.pem("client"), certs.key("client"))
    assert ctx is not None
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert any("execbus test ca" in str(c.get("subject")) for c in ctx.get_ca_certs())
    with pytest.raises(ConfigError, match="need an amqps:// URL"):
        broker_tls_context("amqp://localhost/", certs.pem("ca"), None, None)
    with pytest.raises(ConfigError, match="cannot load the broker TLS files"):
        broker_tls_context(url, certs.pem("ca"), Path("/no/cert.pem"), None)


async def test_worker_passes_the_broker_tls_context(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aio_pika

    from execbus.worker.service import Worker

    seen: dict[str, Any] = {}

    async def fake_connect(url: str, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        raise ConnectionError("no broker in this test")

    monkeypatch.setattr(aio_pika, "connect", fake_connect)
    settings = load_settings(
        amqp_url="amqps://u:p@mq.example:5671/",
        amqp_ca_file=str(certs.pem("ca")),
        amqp_cert_file=str(certs.pem("client")),
        amqp_key_file=str(certs.key("client")),
    )
    worker = Worker(settings, {})
    with pytest.raises(Exception, match="cannot connect to the broker"):
        await worker._connect()
    assert seen["url"] == "amqps://u:p@mq.example:5671/"
    assert isinstance(seen["ssl_context"], ssl.SSLContext)
    assert seen["ssl_context"].verify_mode is ssl.CERT_REQUIRED
