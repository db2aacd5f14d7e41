"""Leader election over any :class:`~swarmha.discovery.Discovery`: :class:`Candidate`, :class:`Follower`, and
:class:`Lease` (one TTL session shared by many candidates); :class:`Phase` names where a campaign is."""

from swarmha.election._lease import Lease
from swarmha.election._phases import Phase
from swarmha.election._sync import Candidate, Follower
from swarmha.election._values import Leader, Term

__all__ = ["Candidate", "Follower", "Leader", "Lease", "Phase", "Term"]
