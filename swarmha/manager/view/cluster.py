"""The primary's view of every engine (:class:`ClusterView`): list and inspect answers without asking the engines.

One :class:`~swarmha.manager.view.engine.EngineView` per healthy engine, started the first time a manager
answers a list or inspect: the primary, and a replica too (it answers these two itself and forwards everything
else to the primary). What is answered from it:

* ``GET /containers/json`` with no query, or only ``all``, ``limit`` (``last``) and a false ``size``: the
  merged list, newest first, names ``/node/name``, each item with Swarm's ``Node``, ``Status`` computed from the
  inspected state at answer time as dockerd does. Any other query (``filters``, ``size=1``, ``before``...) goes
  to the engines as before, so their semantics stay the engines' own.
* ``GET /containers/{id}/json`` without a query: the engine's inspect answer with ``Node``.
* ``GET /images/json``, ``GET /networks`` and ``GET /volumes`` without a query, as each engine would answer them
  (:meth:`ClusterView.lists`): the API merges them as it merges the engines' own answers (names ``node/name``,
  one line per image...). With a query (``all``, ``filters``...) the engines are asked.

Guarantee: an answer is built only when every healthy engine's view is synced and settled (see
:mod:`~swarmha.manager.view.engine`): every event the view received and every mutating call the manager relayed
before the request has been fetched again. The primary marks what a call touched on the engine it sent it to
(:meth:`ClusterView.touched`, when the engine's answer head arrives, before the client sees it); a replica, which
does not know the engine the primary chose, marks on every engine when the primary's answer head arrives
(:meth:`ClusterView.forwarded`): the container list is compared with the view and the container the path names
is fetched again. So a write through a manager is seen by the next list or inspect through the same manager.
A write through another manager (or on an engine directly) is seen once its event arrived.

Otherwise — an engine's view not yet (or no longer) synced, or not settled within :data:`SETTLE_TIMEOUT` — the
methods return None and the caller asks the engines (the primary) or forwards (a replica) as without a view.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

from swarmha.manager.cluster import Cluster, Engine
from swarmha.manager.http import Exchange
from swarmha.manager.upstream import Response
from swarmha.manager.view.engine import CONTAINERS, IMAGES, NETWORKS, VOLUMES, EngineView, Entry

__all__ = ["SETTLE_TIMEOUT", "ClusterView"]

#: Longest a list or inspect waits for an engine's view to apply what it was told before asking the engine.
SETTLE_TIMEOUT = 2.0
_VERSION = re.compile(r"^/v[0-9]+(\.[0-9]+)?(?=/)")
#: The list arguments the view answers (docker-py sends ``trunc_cmd``, which dockerd ignores).
_LIST_ARGS = frozenset({"all", "limit", "last", "size", "trunc_cmd"})
_FALSE = frozenset({"", "0", "no", "false", "none"})
#: The whole-list answers a view keeps, by the request target that asks for them.
_LIST_TARGETS = {"/images/json": IMAGES, "/networks": NETWORKS, "/volumes": VOLUMES}
_JSON = [(b"Content-Type", b"application/json")]


def _true(value: str) -> bool:
    """dockerd's ``httputils.BoolValue``."""
    return value.strip().lower() not in _FALSE


class ClusterView:
    """The views of the cluster's engines (see the module docstring)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._views: dict[str, tuple[EngineView, asyncio.Task[None]]] = {}
        #: The last list answer: (what it was built from, valid until (epoch seconds), its bytes).
        self._last: tuple[Any, float, bytes] | None = None
        #: Each engine's ``Node`` JSON, kept while its ``/info`` answer and name are the same objects.
        self._nodes: dict[str, tuple[Any, str, str, bytes]] = {}
        cluster.closers.append(self.stop)
        cluster.listeners.append(self._health_changed)

    def _health_changed(self, e: Engine, what: str) -> None:
        """An engine the cluster found unhealthy is followed anew once it is back (a full read): its stream may be
        a dead connection that would never tell (a network partition sends no reset)."""
        held = self._views.get(e.addr)
        if what == "engine_disconnect" and held is not None:
            held[1].cancel()
            del self._views[e.addr]

    def view(self, e: Engine) -> EngineView | None:
        held = self._views.get(e.addr)
        return held[0] if held is not None and held[0].engine is e else None

    def stop(self) -> None:
        """Stop following every engine (the manager is stopping)."""
        for _view, task in self._views.values():
            task.cancel()
        self._views.clear()

    def _ensure(self, engines: list[Engine], every: bool = False) -> list[EngineView] | None:
        """The synced views of ``engines`` (starting the missing ones), or None when one is not synced, when there
        is no engine, or when an engine of the cluster is not healthy (what to show of its containers is the
        ordinary path's business): the request goes the ordinary way. ``every``: ``engines`` is the cluster's
        whole list (checked for health here, not asked for again)."""
        if not engines or not all(e.healthy for e in (engines if every else self.cluster.engines)):
            return None
        out: list[EngineView] = []
        ready = True
        for e in engines:
            held = self._views.get(e.addr)
            if held is None or held[0].engine is not e or held[1].done():
                if held is not None:
                    held[1].cancel()
                v = EngineView(self.cluster, e)
                held = self._views[e.addr] = (v, asyncio.ensure_future(v.run()))
                self._drop_departed()
            ready = ready and held[0].synced
            out.append(held[0])
        return out if ready else None

    def _drop_departed(self) -> None:
        present = {e.addr for e in self.cluster.engines}
        for addr in [a for a in self._views if a not in present]:
            self._views.pop(addr)[1].cancel()

    async def _settled(self, views: list[EngineView]) -> bool:
        waiting = [v for v in views if not v.clean()]
        if not waiting:
            return True
        return all(await asyncio.gather(*(v.settled(SETTLE_TIMEOUT) for v in waiting)))

    # -- marking what the manager changed ---------------------------------------------------------------------

    def touched(
        self, e: Engine, method: str, target: str, body: bytes | None = None, created: bytes | None = None
    ) -> None:
        """A ``method target`` call the manager relayed to ``e`` was answered (``body``: its request body when
        known; ``created``: the body of a 201 answer): mark what it may have changed on ``e``."""
        if method in ("GET", "HEAD"):
            return
        v = self.view(e)
        if v is None:
            return
        path = _VERSION.sub("", target.partition("?")[0])
        parts = [unquote(p) for p in path.strip("/").split("/")]
        kind = parts[0] if parts else ""
        if kind == "containers":
            if len(parts) >= 2 and parts[1] == "create":
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    v.touch_container(str(json.loads(created or b"")["Id"]))
            elif len(parts) >= 2 and parts[1] == "prune":
                for entry in list(v.entries(False)):
                    if not entry.running:
                        v.touch_container(str(entry.item["Id"]))
            elif len(parts) >= 2:
                v.touch_container(parts[1])
        elif kind == "commit":
            v.mark(IMAGES)
            container = parse_qs(target.partition("?")[2]).get("container")
            if container:
                v.touch_container(container[-1])
        elif kind in ("images", "build"):
            v.mark(IMAGES)
        elif kind == "networks":
            v.mark(NETWORKS)
            if body and parts[-1] in ("connect", "disconnect"):
                with contextlib.suppress(ValueError, AttributeError):
                    container = json.loads(body).get("Container")
                    if container:
                        v.touch_container(str(container))
        elif kind == "volumes":
            v.mark(VOLUMES)

    def forwarded(self, method: str, target: str) -> Callable[[int, list[tuple[bytes, bytes]]], None] | None:
        """For a replica forwarding ``method target`` to the primary: the ``on_head`` that marks, when the
        primary's answer arrives (before the client sees it), what the call may have changed — on every engine,
        since the replica does not know which one the primary chose: the container list is compared and the
        container the path names fetched again. None for a GET or HEAD (nothing to mark)."""
        if method in ("GET", "HEAD"):
            return None

        def on_head(status: int, headers: list[tuple[bytes, bytes]]) -> None:
            for v, _task in list(self._views.values()):
                v.mark(CONTAINERS)
                self.touched(v.engine, method, target)

        return on_head

    # -- answers ----------------------------------------------------------------------------------------------

    async def answer(self, ex: Exchange, path: str) -> bytes | None:
        """The body for ``ex`` (``path``: its path without the version) when it is a list or inspect the view
        answers (see the module docstring), else None."""
        if ex.method != "GET" or not path.startswith("/containers/"):
            return None
        if path == "/containers/json":
            return await self.listing(ex.query)
        ident = path[len("/containers/") : -len("/json")] if path.endswith("/json") else ""
        return await self.inspect(ident, ex.query_string) if ident else None

    def answer_now(self, path: str, query: str) -> bytes | None:
        """:meth:`answer` for ``GET path?query`` (``path`` without the version, ``query`` as sent) when it needs
        no wait: every view concerned synced and clean (nothing marked is waiting to be fetched again), so the
        answer is the same bytes :meth:`answer` would give now. None: not a list or inspect the view answers, or
        a wait (or the engines) would be needed: serve the request the ordinary way."""
        if path == "/containers/json":
            args = _list_args_of(query) if query else (True, 0)
            if args is None:
                return None
            views = self._ensure(self.cluster.engines, every=True)  # all healthy, or None: the healthy ones
            if views is None:
                return None
            for v in views:
                if not v.clean():
                    return None
            return self._list_body(views, *args)
        if query or not path.startswith("/containers/") or not path.endswith("/json"):
            return None
        ident = path[len("/containers/") : -len("/json")]
        if not ident:
            return None
        ident, views = self._inspect_views(ident)
        if views is None:
            return None
        for v in views:
            if not v.clean():
                return None
        return self._inspect_body(views, ident)

    async def listing(self, query: dict[str, list[str]]) -> bytes | None:
        """The ``GET /containers/json`` answer body for ``query`` (parsed), or None: ask the engines."""
        args = _list_args(query) if query else (True, 0)
        if args is None:
            return None
        views = self._ensure(self.cluster.healthy())
        if views is None:
            return None
        for v in views:
            if not v.clean():
                if not await self._settled(views):
                    return None
                break
        return self._list_body(views, *args)

    async def lists(self, engines: list[Engine], target: str) -> list[tuple[Engine, Response]] | None:
        """``GET target`` (``/images/json``, ``/networks`` or ``/volumes``, without a query) as each of ``engines``
        would answer it, from its view; None when ``target`` is another one or a view is not synced and settled
        (the caller asks the engines, as without a view). Same guarantee as the container answers."""
        key = _LIST_TARGETS.get(target)
        views = None if key is None else self._ensure(engines)
        if key is None or views is None or not await self._settled(views):
            return None
        out = []
        for e, v in zip(engines, views, strict=True):
            if key not in v.lists or not v.clean():
                return None
            out.append((e, Response(200, _JSON, json.dumps(v.lists[key], separators=(",", ":")).encode())))
        return out

    def _list_body(self, views: list[EngineView], running_only: bool, limit: int) -> bytes:
        """The list answer of synced, settled ``views``: rebuilt only when a view, an engine's name or ``Node``
        changed, or a ``Status`` text is due to change (:attr:`_last`)."""
        key = (running_only, limit, *[(v, v.version, v.engine.name, self._node(v.engine)) for v in views])
        now = time.time()
        last = self._last
        if last is not None and now < last[1] and last[0] == key:
            return last[2]
        nodes = [k[3] for k in key[2:]]  # type: ignore[index]
        rows: list[tuple[float, Entry, Engine, bytes]] = []
        for v, node in zip(views, nodes, strict=True):
            e = v.engine
            rows += [(entry.created, entry, e, node) for entry in v.entries(running_only)]
        rows.sort(key=lambda r: r[0], reverse=True)
        if limit > 0:
            rows = rows[:limit]
        until = float("inf")
        parts = []
        for _, entry, e, node in rows:
            text, valid = entry.status(now)
            until = min(until, valid)
            parts.append(_item(entry, e, node, text))
        body = b"[" + b",".join(parts) + b"]\n"
        self._last = (key, until, body)
        return body

    def _node(self, e: Engine) -> bytes:
        """``e``'s Swarm ``Node`` object as JSON (rebuilt when its name or ``/info`` answer changed)."""
        held = self._nodes.get(e.addr)
        if held is not None and held[0] is e.info and held[1] == e.name and held[2] == e.id:
            return held[3]
        node = json.dumps(e.node(), separators=(",", ":")).encode()
        self._nodes[e.addr] = (e.info, e.name, e.id, node)
        return node

    async def inspect(self, ident: str, query: str) -> bytes | None:
        """The ``GET /containers/{ident}/json`` answer body, or None: ask the engines (a query, an unknown or
        ambiguous ``ident``, a view not synced)."""
        if query:
            return None
        ident, views = self._inspect_views(ident)
        if views is None or not await self._settled(views):
            return None
        return self._inspect_body(views, ident)

    def _inspect_views(self, ident: str) -> tuple[str, list[EngineView] | None]:
        """(the container's name or id on its engine, the synced views it may be on) for ``ident`` (``node/name``
        pins one engine); None for the views when one is not synced."""
        engines = self.cluster.healthy()
        node_name, sep, rest = ident.partition("/")
        if sep and rest:
            pinned = self.cluster.engine_named(node_name)
            if pinned is not None:
                engines, ident = [e for e in engines if e is pinned], rest
        return ident, self._ensure(engines)

    def _inspect_body(self, views: list[EngineView], ident: str) -> bytes | None:
        """The inspect answer of ``ident`` from settled ``views``; None when none or several hold it."""
        found = [(v.engine, entry) for v in views if (entry := v.resolve(ident)) is not None]
        if len(found) != 1:
            return None
        e, entry = found[0]
        node = self._node(e)
        cached = entry.inspect_cache
        if cached is not None and cached[0] == node:
            return cached[1]
        body = json.dumps({**entry.inspect, "Node": e.node()}).encode() + b"\n"
        entry.inspect_cache = (node, body)
        return body


def _list_args(query: dict[str, list[str]]) -> tuple[bool, int] | None:
    """(running only, limit) of a list's parsed query; None for a query the view does not answer."""
    if any(k not in _LIST_ARGS for k in query):
        return None
    arg = {k: v[-1] for k, v in query.items()}
    if _true(arg.get("size", "")):
        return None
    try:
        limit = int(arg.get("limit") or arg.get("last") or 0)
    except ValueError:
        return None  # the engines' own refusal
    return not _true(arg.get("all", "")) and limit <= 0, limit


@functools.lru_cache(maxsize=256)
def _list_args_of(query: str) -> tuple[bool, int] | None:
    """:func:`_list_args` of a query as sent (the same few strings mostly: cached, bounded)."""
    return _list_args(parse_qs(query, keep_blank_values=True))


def _item(entry: Entry, e: Engine, node: bytes, status: str) -> bytes:
    """One container's list item for a client: names ``/node/name``, ``Node``, ``Status`` (its text now)."""
    key = (status, e.name, node)
    cached = entry.item_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    item = dict(entry.item)
    item["Names"] = [f"/{e.name}{n}" for n in item.get("Names") or []]
    item["Status"] = status
    if "Node" not in item:
        item["Node"] = e.node()
    body = json.dumps(item, separators=(",", ":")).encode()
    entry.item_cache = (key, body)
    return body
