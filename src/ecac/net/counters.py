"""The node's I/O-level counters (the coordinator keeps the sync ones), shown in ``/status``."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class NodeCounters:
    """Plain ints, changed on the event loop only."""

    requests_served: int = 0
    ops_served: int = 0
    serve_errors: int = 0
    serves_refused: int = 0  # streams reset because the peer had max_serves_per_peer running
    commits: int = 0
    ops_committed: int = 0
    commit_rejections: int = 0
    commits_dropped: int = 0  # of a coordinator that was rebuilt meanwhile
    local_ops_written: int = 0
    penalties: int = 0
    dials: int = 0
    dial_failures: int = 0
    announces_published: int = 0
    announces_dropped_no_peer: int = 0
    announces_coalesced: int = 0  # replaced by a newer one before the publisher took it
    # payload bytes of /ecac/sync/1 streams, both roles (requests and responses), and gossip
    # announces (received: every message the topic validator saw; sent: our own publishes)
    sync_bytes_sent: int = 0
    sync_bytes_received: int = 0
    gossip_messages_in: int = 0
    gossip_bytes_in: int = 0
    gossip_messages_out: int = 0
    gossip_bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
