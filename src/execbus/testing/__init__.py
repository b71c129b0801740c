"""Tools for testing and measuring execbus: real agent and worker processes
(``processes``, ``cluster``), a private RabbitMQ node (``broker``), a TCP fault
proxy (``faultproxy``) and a busybox runc container (``runc``)."""
