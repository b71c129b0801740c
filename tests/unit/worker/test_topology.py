"""Queue arguments: the same on every declare, replicas only when asked for."""

from __future__ import annotations

from execbus.settings import load_settings
from execbus.wire.routing import Names
from execbus.worker.topology import Topology, topology_of


def test_request_queues_are_quorum_with_a_delivery_limit_and_dead_letters() -> None:
    topology = Topology(Names("ns"), delivery_limit=5)
    assert topology.request_queue_arguments(single_active=True) == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": "ns.dead",
        "x-single-active-consumer": True,
    }
    assert "x-single-active-consumer" not in topology.request_queue_arguments(single_active=False)
    assert "x-quorum-initial-group-size" not in topology.quorum(), "the cluster's default"


def test_the_replica_count_is_a_setting() -> None:
    topology = topology_of(load_settings(quorum_replicas=3, namespace="ns"))
    assert topology.quorum()["x-quorum-initial-group-size"] == 3
    assert topology.request_queue_arguments(True)["x-quorum-initial-group-size"] == 3
    assert topology.quorum(**{"x-single-active-consumer": True}) == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-quorum-initial-group-size": 3,
    }
