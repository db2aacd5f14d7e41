"""The HA cluster manager: Docker Swarm classic's ``swarm manage --replication`` on top of swarmha.

Run it with the ``swarmha`` command (:mod:`swarmha.manager.cli`); operators read docs/manager.md, the design is
in docs/manager-design.md.
Layers: :mod:`~swarmha.manager.http` (HTTP/1.1 server) → :mod:`~swarmha.manager.manager` (roles, forwarding,
:mod:`~swarmha.manager.forward` over :mod:`~swarmha.manager.upstream`, the one HTTP client and its pools) →
:mod:`~swarmha.manager.api` (the primary's Docker API) → :mod:`~swarmha.manager.cluster` (engines, placement).
"""

from swarmha.manager.manager import LEADER_KEY, Manager, ManagerConfig

__all__ = ["LEADER_KEY", "Manager", "ManagerConfig"]
