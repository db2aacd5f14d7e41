"""One client connection: the socket, the bytes received and not parsed yet, and h11 while it is in use.

How the next request head is read is the subclass's (:mod:`.parsers`: one whole class per parser, chosen once
per server, as uvicorn chooses its protocol class).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import h11

from swarmha.manager.http._wire import (
    BODY_TIMEOUT,
    IDLE_TIMEOUT,
    LINGER_LIMIT,
    MAX_EARLY,
    READ_SIZE,
    BadRequest,
    BodyBudget,
    ClientGone,
    ErrorBody,
    Head,
    QuickGate,
    plain_error,
)

__all__ = ["Conn"]


class Conn:
    """One client connection: the socket, the bytes received and not parsed yet, and h11 while it is in use.

    Between requests the received bytes wait in :attr:`buf`. A request head that llhttp accepts
    (:func:`_parse_fast`) is taken from there and its body (Content-Length) too. Any other request is parsed
    by an h11 state machine that gets the buffer and every byte received after it until that exchange ends;
    then what h11 holds past the request goes back to the buffer.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: BodyBudget,
        error_body: ErrorBody = plain_error,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.budget = budget
        self.error_body = error_body
        #: Seconds a request body may make no progress (:meth:`read_body`).
        self.body_timeout = body_timeout
        #: Bytes the client sent during a streamed response were dropped (past MAX_EARLY): close after it.
        self.overflowed = False
        #: Received bytes not parsed yet (while h11 does not parse: see :attr:`h11_parses`).
        self.buf = b""
        self._scanned = 0  # bytes of buf searched for the end of an incomplete head (less 3)
        #: The h11 state of the current exchange: the one parsing it, or the one framing its response; or None.
        self.h11: h11.Connection | None = None
        #: h11 parses the current request (received bytes go to it, not to :attr:`buf`).
        self.h11_parses = False
        self.switched = False
        #: The last response was framed without h11 (Exchange.complete's fast path): start a new h11 state.
        self.fast_cycle = False
        self.eof = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._reading: asyncio.Lock = asyncio.Lock()
        #: While h11 reads a request head: the bytes given to it (for checks of the raw head), else None.
        self.fed: list[bytes] | None = None
        self._loop = asyncio.get_running_loop()
        self._idle_until = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._waiting = False  # waiting for the next request (the idle timer may close the connection)
        #: The connection was closed for staying idle too long between requests.
        self.idle_expired = False
        #: The protocol's gate when it may answer requests itself while this connection waits (see
        #: :mod:`swarmha.manager.http.server`); None: every request is read here.
        self.gate: QuickGate | None = None

    async def _read(self) -> int:
        """Read once: into :attr:`buf`, or fed to h11 while it parses (b"" at the end of the stream); the bytes
        read."""
        async with self._reading:
            if self.eof:
                return 0
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.eof = True
            h = self.h11
            if not self.h11_parses or h is None:
                if data:
                    self.buf = self.buf + data if self.buf else data
                return len(data)
            n = len(data)
            if data and data[0] in b"\r\n" and h.their_state is h11.IDLE and not h.trailing_data[0]:
                # empty lines before a request line are ignored (RFC 9112 §2.2); h11 would reject them
                data = data.lstrip(b"\r\n")
                if not data:
                    return n
            if self.fed is not None:
                self.fed.append(data)
            h.receive_data(data)
            return n

    async def read_body(self) -> None:
        """:meth:`_read` for a request body: BadRequest (408) when nothing arrives for :attr:`body_timeout` s."""
        try:
            async with asyncio.timeout(self.body_timeout):
                await self._read()
        except TimeoutError:
            raise BadRequest(f"request body not received: nothing for {self.body_timeout:g} s", 408) from None

    async def _read_idle(self) -> bool:
        """:meth:`_read` between requests; False when the client stayed idle for :data:`IDLE_TIMEOUT` seconds.

        One timer per connection, re-armed only when it fires before the newest deadline (no timer object
        per request): when it fires while the connection is still waiting for a request and the deadline
        has passed, the connection is closed, which ends the read.
        """
        loop = self._loop
        self._idle_until = loop.time() + IDLE_TIMEOUT
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._idle_until, self._idle_check)
        self._waiting = True
        gate = self.gate
        if gate is not None and not self.buf and self.h11 is None:
            gate.armed = True  # nothing received is waiting here: the protocol may answer the next request
        try:
            await self._read()
        finally:
            self._waiting = False
            if gate is not None:
                gate.armed = False
        return not self.idle_expired

    def _idle_check(self) -> None:
        self._idle_timer = None
        if not self._waiting:
            return  # inside an exchange: the next wait for a request arms a new timer
        loop = self._loop
        if self.gate is not None:  # requests answered by the protocol meanwhile are activity too
            self._idle_until = max(self._idle_until, self.gate.last + IDLE_TIMEOUT)
        if loop.time() < self._idle_until:
            self._idle_timer = loop.call_at(self._idle_until, self._idle_check)
            return
        self.idle_expired = True
        self.writer.close()  # the pending read ends with EOF

    async def linger(self, limit: int = LINGER_LIMIT, timeout: float = 5.0) -> None:
        """Half-close, then discard what the client still sends (at most ``limit`` bytes or ``timeout`` seconds).

        After an answer to a request whose body was left unread (413), closing at once would make the kernel
        answer the client's next bytes with a reset, which can destroy the answer before the client reads it
        (Go's net/http and nginx linger the same way). The client that stops sending once it read the answer
        ends this at once; one that sends on is cut at ``limit`` bytes.
        """
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(timeout):
                got = len(self.buf)
                while got < limit and not self.eof:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        break
                    got += len(data)

    def close(self) -> None:
        """Close the connection and stop its idle timer."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.writer.close()

    async def next_event(self) -> Any:
        """The next h11 event of a request body, reading as needed; BadRequest for what h11 rejects (408 when the
        body stalls), ClientGone at a cut."""
        h = self.h11
        assert h is not None
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                if self.eof:
                    raise ClientGone(f"client closed the connection inside a request: {e}") from e
                raise BadRequest(str(e) or "malformed request") from e
            if event is not h11.NEED_DATA:
                return event
            await self.read_body()

    async def read_request(self) -> tuple[Head, int | None] | None:
        """The next request head and, when llhttp parsed it, its body length (None: h11 parses this request);
        None when the client closed (or stayed idle too long) between requests. BadRequest for a bad head."""
        raise NotImplementedError  # the parser's subclass (see .parsers)

    async def wait_closed_by_peer(self) -> None:
        """Return when the client closes. What it sends meanwhile is kept for the next request, up to
        :data:`MAX_EARLY` bytes; past that it is dropped and the connection closes after this exchange."""
        kept = 0
        while not self.eof:
            if kept <= MAX_EARLY:
                kept += await self._read()
                continue
            self.overflowed = True
            async with self._reading:
                try:
                    data = await self.reader.read(READ_SIZE)
                except (ConnectionError, ssl.SSLError, OSError):
                    data = b""
                if not data:
                    self.eof = True
        # the EOF is left for the next request read to notice

    def next_cycle(self) -> bool:
        """Get ready for the next request on a keep-alive connection; False when the connection must close.

        A response that h11 framed: h11 decides (both sides DONE, not MUST_CLOSE). A fast-path response is
        only sent for a keep-alive HTTP/1.1 request read whole (see :meth:`Exchange.complete`). If h11 parsed
        the request, the bytes it holds past the request go back to :attr:`buf`, where the next request is
        read from (by llhttp, or by a fresh h11 state: as after ``start_next_cycle``).
        """
        h, self.h11 = self.h11, None
        fast_cycle, self.fast_cycle = self.fast_cycle, False
        h11_parsed, self.h11_parses = self.h11_parses, False
        if self.switched or self.overflowed:
            return False
        if h is None:  # llhttp parsed the request, the fast path framed the response
            return True
        if h.their_state is not h11.DONE or (not fast_cycle and h.our_state is not h11.DONE):
            return False  # closing (MUST_CLOSE), or the exchange did not finish
        if h11_parsed:
            early, closed = h.trailing_data
            self.buf = bytes(early)
            if closed:
                self.eof = True
        return True

    async def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() or self.writer.transport.is_closing():
                await self.writer.drain()  # the kernel did not take it all (or the connection is closing): wait
        except (ConnectionError, ssl.SSLError, OSError, RuntimeError) as e:
            raise ClientGone(str(e) or type(e).__name__) from e
