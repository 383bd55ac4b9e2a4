"""Moving KV blocks from a prefill worker to a decode worker (NIXL, UCX backend).

Owns the pool's descriptor layout, the NIXL agent of a worker, and the leases under which a
prefill worker keeps KV until it is pulled. Must not know about scheduling or HTTP. `nixl`
is imported only when an agent is created.
"""

from flowprefill.kvtransfer.agent import KVAgent, TransferError, layout_of
from flowprefill.kvtransfer.layout import KVLayout
from flowprefill.kvtransfer.lease import Lease, LeaseTable

__all__ = ["KVAgent", "KVLayout", "Lease", "LeaseTable", "TransferError", "layout_of"]
