"""TLS with half-close for the HTTP server and its clients: :class:`HalfCloseTLS` and :func:`open_connection`.

asyncio's SSL transport cannot half-close (see :class:`HalfCloseTLS`); a hijacked connection needs it.
Which certificates to use is the application's business (it passes an :class:`ssl.SSLContext`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, cast

__all__ = ["PLAIN_HTTP_ANSWER", "HalfCloseTLS", "open_connection"]

log = logging.getLogger("swarmha.manager.tls")
_READ_SIZE = 64 * 1024


#: What Go's net/http answers a plain-HTTP request sent to its TLS port.
PLAIN_HTTP_ANSWER = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"


class HalfCloseTLS(asyncio.Protocol):
    """One TLS connection (server or client side) over a TCP transport that, unlike asyncio's, can half-close.

    asyncio's SSL transport (and uvloop's, a port of it) ends the whole connection when the peer sends
    ``close_notify``, and cannot send one while still reading (``can_write_eof()`` is False). Clients of
    hijacked connections use exactly that: Go's CloseWrite on a TLS connection is a ``close_notify``, sent when
    the client's input ends, after which it still reads the other direction. Through asyncio's transport that
    output was lost. This protocol runs TLS itself (``ssl.SSLObject`` over
    memory BIOs, as asyncio does) and gives the application protocol a transport where the peer's
    ``close_notify`` (or a bare TCP FIN) is ``eof_received()`` with the write side still open, and
    ``write_eof()`` sends ``close_notify`` (then a TCP FIN) with the read side still open.

    The application protocol is made by ``app_factory`` once the handshake succeeded. A failed handshake (a
    client without a certificate where one is required) sends the TLS alert and closes the connection; a
    plain-HTTP request gets Go's ``400 Client sent an HTTP request to an HTTPS server.`` and the close; a
    handshake not done within ``handshake_timeout`` aborts it. Both are logged at debug level.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._app_factory = app_factory
        self._server_side = server_side
        self._seen = False  # some bytes of the handshake arrived
        self._handshake_timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._raw: asyncio.Transport | None = None
        self._app: Any = None  # the application protocol, once the handshake is done
        self._app_transport: _TLSAppTransport | None = None
        self._eof_in = False  # the peer's close_notify (or FIN) was seen
        self._eof_out = False  # our close_notify was sent
        self._closed = False
        #: Set once the handshake ended: True if it succeeded (else :attr:`error` says why).
        self.handshake: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None

    # -- the raw (TCP) side -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's TCPTransport does not subclass asyncio's
        self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout, self._handshake_timed_out)
        self._do_handshake()

    def data_received(self, data: bytes) -> None:
        if self._app is None and self._server_side and not self._seen and data[:1].isalpha() and data[:1].isupper():
            # a plain-HTTP request on the TLS port (a TLS record starts with 0x16): Go's net/http answer
            assert self._raw is not None
            self._raw.write(PLAIN_HTTP_ANSWER)
            self._fail(ssl.SSLError("plain HTTP on a TLS port"))
            return
        self._seen = True
        self._incoming.write(data)
        if self._app is None:
            self._do_handshake()
        if self._app is not None:
            self._read()

    def eof_received(self) -> bool:
        if self._app is None:
            self._fail(ConnectionResetError("the peer closed the connection during the TLS handshake"))
            return False
        self._incoming.write_eof()
        self._read()
        self._peer_eof()
        return True  # our write side stays open (the app decides when to close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.handshake.done():
            self.handshake.set_result(False)
        if self._app is not None:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # -- TLS ----------------------------------------------------------------------------------------------------

    def _do_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as e:
            self._flush()  # the alert, if any
            self._fail(e)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
        self._app = self._app_factory()
        self._app_transport = _TLSAppTransport(self)
        self.handshake.set_result(True)
        self._app.connection_made(self._app_transport)

    def _handshake_timed_out(self) -> None:
        if self._app is None:
            self._fail(TimeoutError(f"no TLS handshake within {self._handshake_timeout:g} s"))

    def _fail(self, error: BaseException) -> None:
        log.debug("TLS connection with %s dropped: %s", self._peer(), error)
        self.error = self.error or error
        if not self.handshake.done():
            self.handshake.set_result(False)
        if self._raw is not None:
            self._raw.close()

    def _peer(self) -> object:
        return None if self._raw is None else self._raw.get_extra_info("peername")

    def _read(self) -> None:
        while not self._eof_in:
            try:
                data = self._ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a FIN without one
                self._peer_eof()
                break
            except ssl.SSLError as e:
                self._flush()
                self._fail(e)
                if self._app_transport is not None:
                    self._app_transport.abort()
                return
            if not data:
                self._peer_eof()
                break
            self._app.data_received(data)
        self._flush()  # TLS 1.3 may answer (key updates)

    def _peer_eof(self) -> None:
        if self._eof_in:
            return
        self._eof_in = True
        if not self._app.eof_received():
            self._close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # -- for the application's transport -------------------------------------------------------------------------

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._eof_out:
            return
        view = memoryview(data)
        while view:
            written = self._ssl.write(view)
            view = view[written:]
        self._flush()

    def _send_close_notify(self) -> None:
        """Send our close_notify, once; the peer may still send after it."""
        if self._eof_out:
            return
        self._eof_out = True
        with contextlib.suppress(ssl.SSLError):  # SSLWantReadError: ours is out, the peer's is still to come
            self._ssl.unwrap()
        self._flush()

    def _write_eof(self) -> None:
        if self._eof_out or self._closed:
            return
        self._send_close_notify()
        if self._raw is not None and self._raw.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._raw.write_eof()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._send_close_notify()
        if self._raw is not None:
            self._raw.close()


class _TLSAppTransport(asyncio.Transport):
    """The application's view of a :class:`HalfCloseTLS` connection."""

    def __init__(self, tls: HalfCloseTLS) -> None:
        super().__init__()
        self._tls = tls
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls._ssl
        if name == "peercert":
            return self._tls._ssl.getpeercert()
        if name == "cipher":
            return self._tls._ssl.cipher()
        if name == "sslcontext":
            # Deliberately not given: asyncio's streams treat a transport with an SSL context as one that cannot
            # half-close, and would close the connection when the peer's close_notify arrives.
            return default
        raw = self._tls._raw
        return default if raw is None else raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        raw = self._tls._raw
        return self._closing or raw is None or raw.is_closing()

    def close(self) -> None:
        self._closing = True
        self._tls._close()

    def abort(self) -> None:
        self._closing = True
        self._tls._closed = True
        if self._tls._raw is not None:
            self._tls._raw.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._tls._write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._tls._write_eof()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        if self._tls._raw is not None:
            self._tls._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._tls._raw is not None:
            self._tls._raw.resume_reading()

    def is_reading(self) -> bool:
        raw = self._tls._raw
        return raw is not None and raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tls._raw is not None:
            self._tls._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        raw = self._tls._raw
        return 0 if raw is None else raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        raw = self._tls._raw
        return (0, 0) if raw is None else raw.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tls._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._tls._app
        return protocol


async def open_connection(
    host: str, port: int, context: ssl.SSLContext, *, limit: int = _READ_SIZE
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection(host, port, ssl=context)``, but over :class:`HalfCloseTLS` (client side).

    Returns once the handshake succeeded (the server's certificate checked against ``host`` when the context
    checks host names); raises the handshake's :class:`ssl.SSLError` or :class:`OSError` otherwise. The
    writer's ``write_eof()`` sends close_notify and keeps reading, so a client's stdin EOF can cross a TLS hop.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    app = asyncio.StreamReaderProtocol(reader, loop=loop)
    raw, tls = await loop.create_connection(
        lambda: HalfCloseTLS(context, lambda: app, server_side=False, server_hostname=host), host, port
    )
    try:
        if not await tls.handshake:
            raise tls.error or ConnectionResetError(f"TLS handshake with {host}:{port} failed")
    except BaseException:
        raw.close()
        raise
    assert tls._app_transport is not None
    return reader, asyncio.StreamWriter(tls._app_transport, app, reader, loop)
