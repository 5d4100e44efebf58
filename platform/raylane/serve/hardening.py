"""Keep a serving replica's sockets on the node's own address.

Ray Serve 2.60 starts every replica's inter-deployment gRPC server on ``[::]:0`` (all interfaces,
hard-coded in ``ray.serve._private.replica``), which would expose engine replicas, and with them
requests that skip the Gateway, to the whole network. raylane binds it to the node's IP instead
(127.0.0.1 on a local head, the node's cluster address elsewhere), which is the address other
nodes use anyway. Call :func:`bind_replica_grpc_to_node_ip` in a replica's constructor: Serve
starts that server right after the constructor returns.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
ALL_INTERFACES = "[::]:"


def bind_replica_grpc_to_node_ip() -> None:
    """Make this replica process bind Serve's internal gRPC server to the node IP only."""
    import ray
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_raylane_node_ip", False):
        return
    node_ip = ray.util.get_node_ip_address()

    def add_port_on_node_ip(server: object, address: str) -> int:
        if address.startswith(ALL_INTERFACES):
            address = f"{node_ip}:{address.removeprefix(ALL_INTERFACES)}"
        return original(server, address)

    add_port_on_node_ip._raylane_node_ip = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_node_ip
