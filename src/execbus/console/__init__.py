"""``execbus console``: a live web view of an execbus namespace (fleet, execs, charts).

A separate process that connects like a client (observer permissions
suffice), follows ``<ns>.control`` (worker announcements) and ``<ns>.events``
(through the SDK), keeps a bounded in-memory view and serves it to browsers.

* :mod:`~execbus.console.store`, :mod:`~execbus.console.fleet`,
  :mod:`~execbus.console.stats`, :mod:`~execbus.console.ansi`: the view
  model, pure (no I/O, no clock of their own);
* :mod:`~execbus.console.feed`: the bus side (SDK subscriptions, reconnects);
* :mod:`~execbus.console.auth`: logins checked against the broker, sessions;
* :mod:`~execbus.console.app`: the Starlette app (page, JSON, server-sent events);
* ``static/``: the page (plain ES modules, uPlot vendored).

Needs the ``console`` extra (``pip install 'execbus[console]'``).
"""
