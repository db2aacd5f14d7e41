"""Leader election over any :class:`~swarmha.discovery.Discovery`: :class:`Candidate` and :class:`Follower`."""

from swarmha.election._sync import Candidate, Follower
from swarmha.election._values import Leader, Term

__all__ = ["Candidate", "Follower", "Leader", "Term"]
