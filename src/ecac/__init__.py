"""ecac: Eventually Consistent Access Control (Python implementation).

The pure core (codec, op, dag, crdt, state, policy, vc, trust, replay, sync planner)
does no I/O and reads no clock; the store, network, CLI and gateway are adapters.
"""

__version__ = "0.1.0"
