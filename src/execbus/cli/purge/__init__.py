"""``execbus purge --namespace NS``: delete every queue and exchange of a namespace.

A namespace's workers declare its exchanges (``<ns>.requests``, ``.events``,
``.dead``, ``.unrouted``, ``.control``), its queues (``<ns>.dead``,
``.unrouted``, ``.agent.<a>``, ``.pool.<p>``) and, per agent, an ownership
lease (``<ns>.lease.<a>``; older workers used ``<ns>.holder.<a>``); none of
them goes away when the workers stop. Exclusive queues (clients'
``<ns>.client.*`` queues, older workers' ``<ns>.owner.<a>`` locks) belong to a
live connection: the broker deletes them when it closes, and nobody else can.

The names are found by the first of these that works (``--via``,
:mod:`~execbus.cli.purge.discovery`):

* ``management``: the management HTTP API (``/api/queues``, ``/api/exchanges``
  of the vhost) with the AMQP URL's credentials: everything of the namespace;
* ``rabbitmqctl``: ``list_queues`` / ``list_exchanges`` on this host's node
  (tried only when the broker is on this host): everything of the namespace;
* ``names``: AMQP alone, which cannot list: the five exchanges and two
  queues every namespace has, plus the agent, pool and lease queues of the
  agents and pools named with ``--agent`` / ``--pool`` or announced by live
  workers. Other queues of the namespace may be left; the output says so.

A listing counts only if it shows a queue purge has just declared through its
AMQP connection, so another node or vhost is never taken for ours.

The modules: :mod:`~execbus.cli.purge.inventory` (what a namespace holds,
probed over AMQP), :mod:`~execbus.cli.purge.discovery` (the listings and
``--via``), :mod:`~execbus.cli.purge.liveness` (are its workers alive?),
:mod:`~execbus.cli.purge.delete` (deleting, and :func:`purge_namespace` for
scripts) and :mod:`~execbus.cli.purge.command` (the command line).
"""

from execbus.cli.purge.command import main
from execbus.cli.purge.delete import PurgeReport, purge_namespace
from execbus.cli.purge.inventory import ListingFailed

__all__ = ["ListingFailed", "PurgeReport", "main", "purge_namespace"]
