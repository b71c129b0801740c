"""``broker_reason``: one line quoting the broker, over the exceptions aiormq really raises.

Each instance is built the way aiormq builds it (``aiormq.channel.exception_by_code``,
``Channel._on_close_frame``, the confirm and return handlers, the connection's
handshake), so a change in what the library keeps in ``args`` shows here.
"""

from __future__ import annotations

import pytest
from aiormq import exceptions as amqp
from aiormq.abc import DeliveredMessage
from aiormq.channel import exception_by_code as channel_error
from aiormq.connection import exception_by_code as connection_error
from pamqp.commands import Basic, Channel, Connection

from execbus.broker import broker_reason, connect_error
from execbus.errors import BrokerRefused, BrokerUnavailable, PublishFailed
from execbus.publishing import publish_errors

WRITE_REFUSED = (
    "ACCESS_REFUSED - write access to exchange 'ns.requests' in vhost '/' refused for user 'obs'"
)


def _returned(reply_text: str) -> amqp.PublishError:
    frame = Basic.Return(reply_code=312, reply_text=reply_text, exchange="ns.requests")
    message = DeliveredMessage(delivery=frame, header=None, body=b"", channel=None)  # type: ignore[arg-type]
    return amqp.PublishError(message, frame)


CASES = [
    pytest.param(
        channel_error(Channel.Close(reply_code=403, reply_text=WRITE_REFUSED)),
        WRITE_REFUSED,
        id="channel-access-refused",
    ),
    pytest.param(
        channel_error(Channel.Close(reply_code=404, reply_text="NOT_FOUND - no queue 'q'")),
        "NOT_FOUND - no queue 'q'",
        id="channel-not-found",
    ),
    pytest.param(
        channel_error(Channel.Close(reply_code=999, reply_text="SOMETHING - new")),
        "SOMETHING - new",
        id="channel-closed-unknown-code",
    ),
    pytest.param(amqp.ChannelClosed(None, None), "the channel was closed", id="channel-close-ok"),
    pytest.param(
        amqp.ChannelClosed(406, ""), "the channel was closed (reply code 406)", id="code-only"
    ),
    pytest.param(
        connection_error(
            Connection.Close(
                reply_code=320,
                reply_text="CONNECTION_FORCED - broker forced connection closure with reason "
                "'shutdown'",
            )
        ),
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        id="connection-forced",
    ),
    pytest.param(
        amqp.ConnectionClosed(501, "FRAME_ERROR - bad\nframe"),
        "FRAME_ERROR - bad frame",
        id="connection-closed-two-lines",
    ),
    pytest.param(
        amqp.InvalidFrameError(
            Connection.Close(
                reply_code=530, reply_text="NOT_ALLOWED - access to vhost 'v' refused for user 'u'"
            )
        ),
        "NOT_ALLOWED - access to vhost 'v' refused for user 'u'",
        id="vhost-refused-at-handshake",
    ),
    pytest.param(
        amqp.ProbableAuthenticationError(
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."
        ),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        id="login-refused",
    ),
    pytest.param(
        amqp.ProbableAuthenticationError(ConnectionResetError(104, "Connection reset by peer")),
        "[Errno 104] Connection reset by peer",
        id="nested-os-error",
    ),
    pytest.param(
        amqp.DeliveryError(None, Basic.Nack(delivery_tag=7)), "nacked by the broker", id="nack"
    ),
    pytest.param(_returned("NO_ROUTE"), "NO_ROUTE", id="returned"),
    pytest.param(
        amqp.ChannelInvalidStateError('<Channel: "1" at 0x7f00> closed'),
        "the channel is closed",
        id="closed-channel-repr",
    ),
    pytest.param(
        amqp.ChannelInvalidStateError("Channel closed by RPC timeout"),
        "Channel closed by RPC timeout",
        id="rpc-timeout",
    ),
    pytest.param(amqp.AMQPConnectionError(), "Unexpected connection problem", id="bare"),
    pytest.param(
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"),
        "[Errno 111] Connect call failed ('127.0.0.1', 1)",
        id="os-error",
    ),
    pytest.param(RuntimeError(), "RuntimeError", id="no-words"),
]


@pytest.mark.parametrize(("exc", "expected"), CASES)
def test_broker_reason_quotes_the_broker_in_one_line(exc: BaseException, expected: str) -> None:
    reason = broker_reason(exc)
    assert reason == expected
    assert "\n" not in reason
    assert " object at 0x" not in reason and not reason.startswith("<")


def test_a_refused_publish_names_the_broker_reply_not_the_exception() -> None:
    refused = channel_error(Channel.Close(reply_code=403, reply_text=WRITE_REFUSED))
    with pytest.raises(PublishFailed) as caught, publish_errors("exec.run", "agent.local", 5.0):
        raise refused
    assert caught.value.message == f"publishing exec.run failed: {WRITE_REFUSED}"
    assert caught.value.__cause__ is refused


def test_a_nacked_publish() -> None:
    nack = amqp.DeliveryError(None, Basic.Nack(delivery_tag=1))
    with pytest.raises(PublishFailed) as caught, publish_errors("the reply", "rk", 5.0):
        raise nack
    assert caught.value.message == "the broker refused the reply for 'rk': nacked by the broker"


def test_connect_errors_use_the_same_words_without_the_password() -> None:
    url = "amqp://u:s3cret@mq:5672/v"
    vhost = amqp.InvalidFrameError(
        Connection.Close(reply_code=530, reply_text="NOT_ALLOWED - access to vhost 'v' refused")
    )
    refused = connect_error(vhost, url)
    assert isinstance(refused, BrokerRefused)
    assert refused.message == (
        "the broker at amqp://u:***@mq:5672/v refused the connection "
        "(NOT_ALLOWED - access to vhost 'v' refused)"
    )
    login = connect_error(amqp.ProbableAuthenticationError("ACCESS_REFUSED - s3cret"), url)
    assert isinstance(login, BrokerRefused)
    assert login.message.endswith("refused our credentials (ACCESS_REFUSED - ***)")
    down = connect_error(ConnectionRefusedError(111, "Connect call failed"), url)
    assert type(down) is BrokerUnavailable
    assert down.message == (
        "cannot connect to the broker at amqp://u:***@mq:5672/v: [Errno 111] Connect call failed"
    )


def test_a_close_at_connection_open_is_a_refusal_as_aiormq_7_words_it() -> None:
    """aiormq 7 formats the Close it got instead of OpenOk into a string (the reply text
    is lost): a missing or forbidden virtual host must still be permanent."""
    close = Connection.Close(reply_code=530, reply_text="NOT_ALLOWED - vhost v not found")
    worded = amqp.InvalidFrameError(f"Expected one of ['Connection.OpenOk'], got {close!r}")
    refused = connect_error(worded, "amqp://u:s3cret@mq:5672/v")
    assert isinstance(refused, BrokerRefused)
    assert "refused the connection (closed at Connection.Open" in refused.message
    other = amqp.InvalidFrameError("Expected one of ['Connection.Tune'], got garbage")
    assert type(connect_error(other, "amqp://mq")) is BrokerUnavailable
