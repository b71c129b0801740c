"""The SDK's broker connection: URLs with their passwords redacted (``client/connection.py``)."""

from __future__ import annotations

from execbus.client.connection import redact_url


def test_redact_url_hides_the_password() -> None:
    assert redact_url("amqp://u:pw@host:5672/vh") == "amqp://u:***@host:5672/vh"
    assert redact_url("amqp://host/") == "amqp://host/"
