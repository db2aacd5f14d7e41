"""Streams that outlive the primary serving them: a replica resumes them on the next primary where the client is.

A replica relays ``docker logs`` (``GET /containers/{id}/logs``), ``docker events`` (``GET /events``),
``docker stats`` (``GET /containers/{id}/stats``, streaming) and ``docker wait`` (``POST /containers/{id}/wait``)
through a :class:`Cursor` that knows which messages the client already has. When the primary ends such a stream
without its end (the connection closes or resets mid-body: it was stopped and its ``--shutdown-timeout`` passed,
or it crashed), the manager (:mod:`swarmha.manager.manager`) sends the cursor's :meth:`~Cursor.resume_target` to
whichever manager is primary then, and the client's response goes on: no new head, no gap, no duplicate.

How each stream is resumed, exactly:

* **logs**: asked upstream with ``timestamps=1`` (stripped again before delivery unless the client asked for
  them), so every message carries the engine's nanosecond timestamp. A resume asks ``since`` the oldest
  timestamp among the last :data:`KEPT` messages delivered, ``tail=all``; the engine replays from its log file
  in file order, and each replayed message that is one of those kept (same stream, same bytes, counted per
  copy) is dropped. Nothing delivered yet: the whole log again if the client asked all of it, else ``since``
  the stream's start (this manager's clock).
* **events**: each event is known by (``node.Addr``, ``timeNano``, type, action, actor); a resume asks ``since``
  the oldest ``timeNano`` kept; the new primary replays what each engine still buffers (Docker keeps 256
  events) and replayed events already delivered are dropped (the last :data:`EVENTS_KEPT` per node are kept,
  more than an engine buffers). Nothing delivered yet: ``since`` the stream's start.
* **stats**: samples (one a second) are not replayed by Docker; a resume asks a new stream and drops samples
  not newer (``read``) than the last one delivered.
* **wait**: one answer at the container's exit; a resume asks it again, ``next-exit`` as ``not-running`` (the
  exit may have happened between the two primaries; a container that was never started and is still not
  running then answers at once instead of waiting for a start).

Only messages received whole are delivered (a message cut by the failure is replayed whole). Limits: a TTY
container's log line longer than 16 KiB that the engine split without a line end is re-joined with the next
message's timestamp left in it; if a stream's first answer was not ``200`` or not chunked, it is relayed as is
and not resumed.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import hashlib
import json
import re
import time
from typing import Any

from swarmha.manager.api._docker import replace_query
from swarmha.manager.forward import pump_while_connected
from swarmha.manager.http import ClientGone, Exchange
from swarmha.manager.upstream import BROKEN, HOP, Streamed, Upstream, UpstreamBroken, stream

__all__ = ["EVENTS_KEPT", "KEPT", "Cursor", "StreamCut", "plan", "relay"]

#: Log messages remembered per stream for a resume's deduplication.
KEPT = 1024
#: Events remembered per node (more than the 256 a Docker engine buffers for ``since``).
EVENTS_KEPT = 320

_LOGS = re.compile(r"/containers/[^/]+/logs")
_STATS = re.compile(r"/containers/[^/]+/stats")
_WAIT = re.compile(r"/containers/[^/]+/wait")
_STAMP = re.compile(rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_DROPPED = HOP | {b"content-length", b"transfer-encoding"}


class StreamCut(Exception):
    """The upstream broke a resumable stream mid-body; the client's response is intact and may go on."""


def _truthy(value: str) -> bool:
    """Docker's boolean query values (``httputils.BoolValue``)."""
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def stamp_ns(raw: bytes) -> int | None:
    """An RFC 3339 timestamp with up to nanoseconds (Docker's) as Unix nanoseconds; None if it is not one."""
    m = _STAMP.fullmatch(raw)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * 1_000_000_000 + int((frac or b"0").ljust(9, b"0"))


def unix_ns(ns: int) -> str:
    """Unix nanoseconds as Docker's ``since`` value (``seconds.nanoseconds``)."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _query_ns(value: str) -> int | None:
    """A ``since``/``until`` query value in Unix seconds (``1700000000`` or ``1700000000.5``) as nanoseconds."""
    secs, _, frac = value.partition(".")
    if not secs.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(secs) * 1_000_000_000 + int(frac[:9].ljust(9, "0") or "0")


class Cursor:
    """Where a client is in a stream: what to ask upstream first and on a resume, and what to deliver."""

    def __init__(self, path: str, query: str) -> None:
        self.path, self.query = path, query
        self.began_ns = time.time_ns()
        #: The status of the first answer; a resumed answer must have the same.
        self.status = 0
        #: Whether the stream can be resumed (a chunked 200 answer: its end is told from a cut).
        self.resumable = False
        #: Messages delivered since the last (re)start (the manager gives a stream up after three resumes in a
        #: row that deliver nothing).
        self.delivered = 0
        self._buf = b""

    def target(self) -> str:
        """The request target of the first attempt."""
        return self._with(self.first_query())

    def resume_target(self) -> str:
        """The request target of a resume (call once per resume: it prepares the deduplication)."""
        self._buf = b""
        self.delivered = 0
        return self._with(self.next_query())

    def _with(self, query: str) -> str:
        return f"{self.path}?{query}" if query else self.path

    def first_query(self) -> str:
        return self.query

    def next_query(self) -> str:
        return self.query

    def begin(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The first answer's head: returns the headers to relay to the client."""
        self.status = status
        chunked = any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers)
        self.resumable = status == 200 and chunked
        if status != 200:
            return [(n, v) for n, v in headers if n.lower() not in HOP]
        return [(n, v) for n, v in headers if n.lower() not in _DROPPED]  # the body changes: framed anew

    def feed(self, data: bytes) -> bytes:
        """Bytes from upstream in, bytes for the client out (whole new messages only)."""
        if self.status != 200:
            return data
        self._buf += data
        out, self._buf = self.messages(self._buf)
        return out

    def end(self) -> bytes:
        """The upstream ended the stream properly: whatever is left."""
        rest, self._buf = self._buf, b""
        return rest

    def messages(self, buf: bytes) -> tuple[bytes, bytes]:
        """(bytes to deliver, the incomplete rest) for ``buf``."""
        return buf, b""


class _Logs(Cursor):
    def __init__(self, path: str, query: str) -> None:
        super().__init__(path, query)
        args = dict(_pairs(query))
        self.stamped = _truthy(args.get("timestamps", ""))
        self.tail = args.get("tail", "all")
        self.mux: bool | None = None
        #: (timestamp ns, digest) of the last messages delivered, oldest first.
        self.kept: collections.deque[tuple[int, bytes]] = collections.deque()
        self._last_evicted = (-1, 0)  # (timestamp, how many evicted messages carried it)
        self._skip_first = 0
        self._expect: collections.Counter[bytes] = collections.Counter()

    def first_query(self) -> str:
        return replace_query(self.query, timestamps="1")

    def next_query(self) -> str:
        if not self.kept:  # nothing delivered yet: all of it again, or (a tail asked) what came since the start
            if self.tail.strip().lower() in ("", "all", "-1"):
                return self.first_query()
            since = max(self.began_ns, _query_ns(dict(_pairs(self.query)).get("since", "")) or 0)
            return replace_query(self.query, timestamps="1", tail="all", since=unix_ns(since))
        since = min(ts for ts, _ in self.kept)
        self._expect = collections.Counter(d for _, d in self.kept)
        ts, count = self._last_evicted
        self._skip_first = count if ts == since else 0
        return replace_query(self.query, timestamps="1", tail="all", since=unix_ns(since))

    def messages(self, buf: bytes) -> tuple[bytes, bytes]:
        if self.mux is None:
            if not buf:
                return b"", b""
            self.mux = buf[0] < 0x20  # a frame header's stream byte; a raw stream starts with its timestamp
        out = []
        pos, n = 0, len(buf)
        while pos < n:  # offsets, not slices of the rest: a chunk of many small messages costs one pass
            if self.mux:
                if n - pos < 8:
                    break
                size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                if n - pos < 8 + size:
                    break
                kind, payload, pos = buf[pos : pos + 1], buf[pos + 8 : pos + 8 + size], pos + 8 + size
            else:
                end = buf.find(b"\n", pos)
                if end < 0:
                    break
                kind, payload, pos = b"", buf[pos : end + 1], end + 1
            stamp, _, line = payload.partition(b" ")
            ts = stamp_ns(stamp)
            if ts is None:  # not stamped (not a log line the engine framed): delivered as it is
                ts, line = -1, payload
            elif self._seen(ts, hashlib.blake2b(kind + payload, digest_size=16).digest()):
                continue
            text = payload if self.stamped or ts < 0 else line
            out.append(kind + b"\0\0\0" + len(text).to_bytes(4, "big") + text if self.mux else text)
        return b"".join(out), buf[pos:]

    def _seen(self, ts: int, digest: bytes) -> bool:
        """True if this replayed message was delivered before; else remember it as delivered."""
        if self._skip_first:
            self._skip_first -= 1
            return True
        if self._expect[digest] > 0:
            self._expect[digest] -= 1
            return True
        self.delivered += 1
        self.kept.append((ts, digest))
        if len(self.kept) > KEPT:
            old, _ = self.kept.popleft()
            last, count = self._last_evicted
            self._last_evicted = (old, count + 1 if old == last else 1)
        return False

    def end(self) -> bytes:
        if self.mux is False and self._buf:  # a last line without its line end
            self._buf += b"\n"
            out, _ = self.messages(self._buf)
            self._buf = b""
            return out[:-1] if out.endswith(b"\n") else out
        return super().end()


class _Events(Cursor):
    def __init__(self, path: str, query: str) -> None:
        super().__init__(path, query)
        self.kept: dict[str, collections.OrderedDict[tuple[Any, ...], int]] = {}

    def next_query(self) -> str:
        stamps = [ts for node in self.kept.values() for ts in node.values()]
        since = min(stamps) if stamps else self.began_ns
        since = max(since, _query_ns(dict(_pairs(self.query)).get("since", "")) or 0)
        return replace_query(self.query, since=unix_ns(since))

    def messages(self, buf: bytes) -> tuple[bytes, bytes]:
        *lines, rest = buf.split(b"\n")
        out = []
        for line in lines:
            if line.strip() and self._seen(line):
                continue
            out.append(line + b"\n")
        return b"".join(out), rest

    def _seen(self, line: bytes) -> bool:
        try:
            event = json.loads(line)
            node = str((event.get("node") or {}).get("Addr", ""))
            ts = int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000)
            actor = event.get("Actor") or {}
            key = (ts, event.get("Type"), event.get("Action"), event.get("status"), event.get("id"), actor.get("ID"))
        except (ValueError, TypeError, AttributeError):
            return False  # not an event: delivered as it is
        kept = self.kept.setdefault(node, collections.OrderedDict())
        if key in kept:
            return True
        self.delivered += 1
        kept[key] = ts
        if len(kept) > EVENTS_KEPT:
            kept.popitem(last=False)
        return False


class _Stats(Cursor):
    def __init__(self, path: str, query: str) -> None:
        super().__init__(path, query)
        self.last = -1

    def messages(self, buf: bytes) -> tuple[bytes, bytes]:
        *lines, rest = buf.split(b"\n")
        out = []
        for line in lines:
            try:
                read = stamp_ns(str(json.loads(line).get("read", "")).encode()) or 0
            except (ValueError, AttributeError):
                read = 0
            if read and read <= self.last:
                continue
            self.last = max(self.last, read)
            self.delivered += 1
            out.append(line + b"\n")
        return b"".join(out), rest


class _Wait(Cursor):
    def next_query(self) -> str:
        if dict(_pairs(self.query)).get("condition") == "next-exit":
            return replace_query(self.query, condition="not-running")
        return self.query

    def messages(self, buf: bytes) -> tuple[bytes, bytes]:
        return b"", buf  # one answer, delivered whole at its end


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)


def plan(ex: Exchange, path: str) -> Cursor | None:
    """The cursor for ``ex`` if it is a stream a replica resumes (``path``: without the API version prefix)."""
    if ex.upgrade or ex.has_body:
        return None
    if ex.method == "GET":
        if path == "/events":
            return _Events(ex.path, ex.query_string)
        if _LOGS.fullmatch(path):
            return _Logs(ex.path, ex.query_string)
        if _STATS.fullmatch(path) and _truthy(ex.arg("stream", "1")):
            return _Stats(ex.path, ex.query_string)
    elif ex.method == "POST" and _WAIT.fullmatch(path):
        return _Wait(ex.path, ex.query_string)
    return None


async def relay(ex: Exchange, up: Upstream, cursor: Cursor, *, connect_timeout: float) -> None:
    """One attempt of a resumable stream on ``up``: the first (the client's response starts with its head) or a
    resume (``ex.started``: the body goes on).

    Raises :class:`~swarmha.manager.upstream.UpstreamUnreachable` when ``up`` cannot be reached, ``UpstreamBroken``
    when it fails before answering the first attempt, :class:`StreamCut` when it breaks a resumable stream
    mid-body or fails before answering a resume, ``ClientGone`` when the client leaves, a stream that cannot be
    resumed breaks, or a resume is answered with another status than the first attempt (the stream is given up).
    """
    first = not ex.started
    target = cursor.target() if first else cursor.resume_target()
    try:
        async with stream(up, ex.method, target, headers=ex.headers, connect_timeout=connect_timeout) as r:
            await _relay(ex, r, up, cursor, first)
    except UpstreamBroken as e:  # before the head
        if first:
            raise
        raise StreamCut(f"{up} failed before answering the resumed stream: {e}") from e


async def _relay(ex: Exchange, r: Streamed, up: Upstream, cursor: Cursor, first: bool) -> None:
    chunked = r.header("transfer-encoding").lower() == "chunked"
    if first:
        await ex.start(r.status, cursor.begin(r.status, r.headers))
    elif r.status != cursor.status or not chunked:
        raise ClientGone(f"{up} answered {r.status} to the resumed stream: giving it up")
    await pump_while_connected(ex, _pump(ex, r.chunks(), cursor, up))


async def _pump(ex: Exchange, chunks: Any, cursor: Cursor, up: Upstream) -> None:
    while True:
        try:
            data = await anext(chunks, None)
        except BROKEN as e:
            why = "closed the connection mid-stream" if isinstance(e, asyncio.IncompleteReadError) else str(e)
            if cursor.resumable:
                raise StreamCut(f"{up} broke the stream: {why or type(e).__name__}") from e
            raise ClientGone(f"{up} broke during the response: {why or type(e).__name__}") from e
        if data is None:
            break
        out = cursor.feed(data)
        if out:
            await ex.send(out)
    rest = cursor.end()
    if rest:
        await ex.send(rest)
    await ex.end()
