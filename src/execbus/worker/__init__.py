"""The worker daemon: consumes agents' request queues, keeps their registries, drives them.

``service`` (the daemon and its broker sessions), ``ownership``/``membership``
(who owns which agent) and ``lease`` (owning one), ``runtime`` (one agent),
``consumer``/``acks``/``publisher`` (AMQP in and out), and the use cases:
``execs`` (requests), ``ends`` (an exec's end), ``watch`` (the agent's
listener and the takeover sync), with their pure helpers.
"""
