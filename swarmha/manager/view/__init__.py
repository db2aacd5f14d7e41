"""The primary's event-fed view of the engines: list and inspect answers without a round trip to every engine.

:class:`ClusterView` (one per primary API) holds an :class:`EngineView` per engine; the modules say what is
answered from it and the freshness it guarantees.
"""

from swarmha.manager.view.cluster import SETTLE_TIMEOUT, ClusterView
from swarmha.manager.view.engine import EngineView, Entry

__all__ = ["SETTLE_TIMEOUT", "ClusterView", "EngineView", "Entry"]
