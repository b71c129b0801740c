"""An in-memory stand-in for the broker, for fast unit tests of the delivery layer.

Three pieces, the first two after faststream's ``TestRabbitBroker``/``build_message``:

* :class:`FakeDelivery` is a request delivery as the consumer receives it
  (an aio-pika message with the properties a publisher sets: ``body``,
  ``headers``, ``message_id``, ``correlation_id``, ``reply_to``,
  ``user_id``, ``type``, plus ``delivery_tag``, ``redelivered``,
  ``routing_key``, ...). ``ack``/``nack``/``reject`` are recorded as
  :class:`Settlement` values; settling twice raises like aio-pika does (and is
  recorded too, so a test sees it); :meth:`FakeDelivery.settled` waits for
  the first settlement. ``settle_error`` stands for a channel that died
  before the settle.
* :class:`RecordingPublisher` is the worker's real
  :class:`~execbus.worker.publisher.Publisher` (the same properties, headers
  and dead-letter copy) with the last step, the broker's confirm, replaced:
  every publish is recorded as a :class:`Published`. It can be told to fail
  (:meth:`RecordingPublisher.fail`: the real error translation turns the
  missing confirm into :class:`~execbus.errors.PublishFailed`) or to hold its
  confirms (:meth:`RecordingPublisher.hold`/:meth:`~RecordingPublisher.release`).
* :class:`FakeConfirmBroker` hands out confirm-mode :class:`FakeChannel`\\ s
  (on its fake ``connection``; :meth:`~FakeConfirmBroker.open` is a
  :data:`~execbus.publishing.ChannelOpener`) that answer publishes as
  RabbitMQ 3.10 does while a quorum queue's recorded leader is down: a
  channel's first publish to such a queue is nacked, and so is every later
  one of that channel to that queue, while a fresh channel is acked once the
  queue has a leader again. For :class:`~execbus.publishing.ConfirmChannel`
  and what publishes through it (the SDK's RPC, the worker's publisher).

Only the broker is replaced: the consumer, settle, lanes, pools and the use
cases under them are the real objects. Integration tests keep the real
RabbitMQ (``docs/architecture.md``, testing).

The package: ``deliveries`` (:class:`FakeDelivery`, :class:`Settlement`),
``publisher`` (:class:`RecordingPublisher`, :class:`Published`),
``channels`` (:class:`FakeConfirmBroker`, :class:`FakeChannel`). Every name
is importable from here.
"""

from execbus.testing.amqp.channels import FakeChannel, FakeConfirmBroker
from execbus.testing.amqp.channels import _FakeConnection as _FakeConnection
from execbus.testing.amqp.channels import _RawFakeChannel as _RawFakeChannel
from execbus.testing.amqp.deliveries import (
    ACKED,
    REJECTED,
    REQUEUED,
    FakeDelivery,
    Settlement,
)
from execbus.testing.amqp.deliveries import JSON as JSON
from execbus.testing.amqp.publisher import Failure as Failure
from execbus.testing.amqp.publisher import Published, RecordingPublisher

__all__ = [
    "ACKED",
    "REJECTED",
    "REQUEUED",
    "FakeChannel",
    "FakeConfirmBroker",
    "FakeDelivery",
    "Published",
    "RecordingPublisher",
    "Settlement",
]
