"""swarmha: leader election for Python over etcd, ZooKeeper, Consul, or an embedded sqlite file.

    import swarmha
    d = swarmha.connect("sqlite:///tmp/election.db")
    with swarmha.Candidate(d, "svc/leader", node="10.0.0.1:4000", ttl=10.0) as c:
        for elected in c.run_for_election():
            ...

See :class:`Candidate` for the guarantees, :mod:`swarmha.aio` for asyncio, :mod:`swarmha.errors` for failures.
"""

from swarmha import aio, errors
from swarmha.discovery import Discovery, connect
from swarmha.election import Candidate, Follower, Leader, Lease, Phase, Term

__all__ = ["Candidate", "Discovery", "Follower", "Leader", "Lease", "Phase", "Term", "aio", "connect", "errors"]
__version__ = "0.1.0"
