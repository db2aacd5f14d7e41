"""TLS contexts for the manager, with Docker's flag semantics.

* ``--tls``: serve TLS with ``--tlscert``/``--tlskey``; clients are not asked for certificates.
* ``--tlsverify`` (implies ``--tls``): clients must present a certificate signed by ``--tlscacert``;
  a client without one fails the handshake.
* Replica → primary forwarding presents this manager's certificate (mutual TLS) and, with ``--tlsverify``,
  verifies the primary's certificate against the CA, host name (or IP SAN) included.
* Connections are served and opened with :class:`~swarmha.manager.http.tls.HalfCloseTLS` (TLS with half-close,
  which asyncio's own SSL transport lacks), so a client's ``close_notify`` ends only its direction, as Docker's
  CLI expects of a hijacked connection.

Every loading error is a :class:`~swarmha.errors.ConfigurationError` naming the file, raised before anything
is started.
"""

from __future__ import annotations

import ssl

import attrs

from swarmha.errors import ConfigurationError

__all__ = ["TLSConfig"]


@attrs.frozen
class TLSConfig:
    """The TLS flags of ``swarmha manage``."""

    enabled: bool = False
    verify: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def check(self) -> None:
        """Raise ConfigurationError when a needed file is missing or unreadable."""
        if not (self.enabled or self.verify):
            return
        if not self.cert or not self.key:
            raise ConfigurationError("--tls/--tlsverify need --tlscert and --tlskey")
        if self.verify and not self.cacert:
            raise ConfigurationError("--tlsverify needs --tlscacert (the CA that signs client certificates)")
        self.server_context()
        self.client_context()

    def server_context(self) -> ssl.SSLContext | None:
        """The context to serve with (None without TLS)."""
        if not (self.enabled or self.verify):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load(ctx)
        if self.verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext | None:
        """The context for forwarding to the primary (mutual TLS; None without TLS)."""
        if not (self.enabled or self.verify):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._load(ctx)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _load(self, ctx: ssl.SSLContext) -> None:
        assert self.cert and self.key
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(f"cannot load --tlscert {self.cert!r} / --tlskey {self.key!r}: {e}") from e
        if self.cacert:
            try:
                ctx.load_verify_locations(self.cacert)
            except (OSError, ssl.SSLError) as e:
                raise ConfigurationError(f"cannot load --tlscacert {self.cacert!r}: {e}") from e
