"""Tools for testing and measuring execbus: real agent and worker processes
(``processes``, ``cluster``), a private RabbitMQ node (``broker``), a TCP fault
proxy (``faultproxy``), a busybox runc container (``runc``), an in-memory
stand-in for the broker at the unit level (``amqp``) and waiting on conditions
(``waiting``)."""
