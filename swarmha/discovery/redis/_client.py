"""The URL forms, the one connection for requests (and the one for pub/sub), and every Redis error translated.

:class:`Target` is a parsed URL; :class:`Link` holds the request client (every call takes :attr:`Link.lock`, so the
client's pool never opens a second connection) and makes the pub/sub client; :func:`translate` turns a redis-py
exception into a :class:`~swarmha.errors.DiscoveryError` that names the server and the bad part.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import redis
from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "SENTINEL_PORT", "Link", "Target", "translate"]

log = logging.getLogger("swarmha.discovery.redis")

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
DEFAULT_TIMEOUT = 5.0
DEFAULT_POLL = 1.0
SCHEMES = ("redis", "rediss", "redis+sentinel")
_OPTIONS = {"db", "timeout", "poll", "events", "ca", "cert", "key", "verify"}
_SENTINEL_OPTIONS = {"db", "timeout", "poll", "events", "sentinel_user", "sentinel_password"}
_EVENTS = ("auto", "server", "poll")
_T = TypeVar("_T")


@attrs.frozen
class Target:
    """A parsed ``redis://``, ``rediss://`` or ``redis+sentinel://`` URL (see the package docstring)."""

    url: DiscoveryURL
    prefix: str
    db: int
    timeout: float
    poll: float
    events: str  # auto | server | poll
    host: str = ""
    port: int = DEFAULT_PORT
    service: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    ssl: dict[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def where(self) -> str:
        if self.service is not None:
            return f"the primary of Sentinel service {self.service!r}"
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    @classmethod
    def parse(cls, url: DiscoveryURL) -> Target:
        shown = str(url)
        if url.scheme not in SCHEMES:
            raise InvalidDiscoveryURL(f"discovery URL {shown!r} is not a redis://, rediss:// or redis+sentinel:// URL")
        sentinel = url.scheme == "redis+sentinel"
        url.check_options(_SENTINEL_OPTIONS if sentinel else _OPTIONS)
        if not url.hosts:
            form = (
                "redis+sentinel://HOST:26379[,HOST:PORT...]/SERVICE[/PREFIX]"
                if sentinel
                else "redis://HOST[:PORT]/PREFIX"
            )
            raise InvalidDiscoveryURL(f"{url.scheme} URL {shown!r} names no host: expected {form}")
        raw_db = url.params.get("db", "0")
        if not raw_db.isdigit():
            raise InvalidDiscoveryURL(f"{url.scheme} URL {shown!r}: db must be a database number >= 0, not {raw_db!r}")
        events = url.params.get("events", "auto")
        if events not in _EVENTS:
            raise InvalidDiscoveryURL(
                f"{url.scheme} URL {shown!r}: events must be one of {', '.join(_EVENTS)}, not {events!r}"
            )
        common: dict[str, Any] = {
            "url": url,
            "db": int(raw_db),
            "timeout": url.seconds("timeout", DEFAULT_TIMEOUT),
            "poll": url.seconds("poll", DEFAULT_POLL),
            "events": events,
        }
        if sentinel:
            service, _, prefix = url.path.partition("/")
            if not service:
                raise InvalidDiscoveryURL(
                    f"redis+sentinel URL {shown!r} names no service: expected "
                    "redis+sentinel://HOST:26379[,HOST:PORT...]/SERVICE[/PREFIX]"
                )
            return cls(prefix=prefix, service=service, sentinels=tuple(url.endpoints(SENTINEL_PORT)), **common)
        if len(url.hosts) > 1:
            raise InvalidDiscoveryURL(
                f"{url.scheme} URL {shown!r} names {len(url.hosts)} hosts: a redis:// URL names one server; for a "
                "Sentinel-managed primary use redis+sentinel://SENTINEL:26379,.../SERVICE/PREFIX"
            )
        ((host, port),) = url.endpoints(DEFAULT_PORT)
        return cls(prefix=url.path, host=host, port=port, ssl=_ssl_options(url), **common)


def _ssl_options(url: DiscoveryURL) -> dict[str, Any]:
    ca, cert, key = (url.params.get(k) for k in ("ca", "cert", "key"))
    verify = url.params.get("verify", "1")
    if url.scheme != "rediss":
        if ca or cert or key or "verify" in url.params:
            raise InvalidDiscoveryURL(f"redis URL {str(url)!r}: ca, cert, key and verify need TLS: use rediss://")
        return {}
    if (cert is None) != (key is None):
        raise InvalidDiscoveryURL(f"rediss URL {str(url)!r}: cert and key go together")
    if verify not in ("0", "1"):
        raise InvalidDiscoveryURL(f"rediss URL {str(url)!r}: verify must be 0 or 1, not {verify!r}")
    for name, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None:
            try:
                open(path, "rb").close()
            except OSError as e:
                raise InvalidDiscoveryURL(
                    f"rediss URL {str(url)!r}: cannot read {name}={path!r}: {e.strerror}"
                ) from None
    return {
        "ssl": True,
        "ssl_ca_certs": ca,
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_cert_reqs": "required" if verify == "1" else "none",
        "ssl_check_hostname": verify == "1",
    }


def translate(error: Exception, what: str, target: Target) -> DiscoveryError:
    """The :class:`DiscoveryError` for a redis-py exception raised by ``what`` (naming the server and the cause)."""
    where = target.where
    text = str(error) or type(error).__name__
    upper = text.upper()
    if isinstance(error, rx.AuthenticationError) or "WRONGPASS" in upper or "NOAUTH" in upper:
        user = target.url.username or "default"
        return DiscoveryError(
            f"redis at {where} refused the URL's credentials (user {user!r}): {text}; check user:password@ in the URL"
        )
    if isinstance(error, MasterNotFoundError):
        return DiscoveryUnavailable(f"no Sentinel of {target.url} knows a primary for {target.service!r}: {text}")
    if isinstance(error, rx.ReadOnlyError):
        if target.service is not None:  # a failover is under way: the pool asks the Sentinels again
            return DiscoveryUnavailable(f"redis {what} at {where}: the primary was demoted ({text})")
        return DiscoveryError(
            f"redis at {where} is a read-only replica ({text}): point the URL at the primary, or let Sentinel find it "
            "with redis+sentinel://SENTINEL:26379/SERVICE/PREFIX"
        )
    if isinstance(error, rx.NoPermissionError):
        return DiscoveryError(f"redis at {where} denied {what} to user {target.url.username or 'default'!r}: {text}")
    lowered = text.lower()
    if "unknown command" in lowered and any(c in lowered for c in ("evalsha", "'eval'", "script")):
        return DiscoveryError(
            f"redis at {where} has no script support ({text}): swarmha runs every claim and compare-and-delete as "
            "a Lua script (EVALSHA, SCRIPT LOAD); enable them (no rename-command of EVAL/EVALSHA/SCRIPT)"
        )
    if isinstance(error, (rx.ConnectionError, rx.TimeoutError, OSError)):
        return DiscoveryUnavailable(f"redis {what} at {where} failed: {text}")
    if upper.startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY", "CLUSTERDOWN", "NOREPLICAS")):
        return DiscoveryUnavailable(f"redis {what} at {where} failed: {text}")
    if upper.startswith(("MOVED", "ASK", "CROSSSLOT")):
        return DiscoveryError(f"redis at {where} is a Redis Cluster node ({text}): Redis Cluster is not supported")
    return DiscoveryError(f"redis {what} at {where} failed: {text}")


class Link:
    """The request client of one Discovery (one connection: every call holds :attr:`lock`) and the pub/sub client
    factory. With Sentinel, the Sentinels are asked for the primary when a connection is (re)opened."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.lock = threading.Lock()
        self._sentinel: Sentinel | None = None
        t = target
        # One quick retry when the connection turns out dead (a restarted server): never on a timeout, so a call
        # takes at most about 2 x timeout. Every script is safe to send twice (see _discovery.py).
        self._kwargs: dict[str, Any] = {
            "db": t.db,
            "username": t.url.username,
            "password": t.url.password,
            "socket_timeout": t.timeout,
            "socket_connect_timeout": t.timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(rx.ConnectionError,)),
            "decode_responses": True,
            "client_name": "swarmha",
            "protocol": 2,  # RESP2: Redis 5 has no HELLO/RESP3
            **t.ssl,
        }
        if t.service is not None:
            sentinel_kwargs = {
                "socket_timeout": t.timeout,
                "socket_connect_timeout": t.timeout,
                "username": t.url.params.get("sentinel_user"),
                "password": t.url.params.get("sentinel_password"),
                "decode_responses": True,
            }
            self._sentinel = Sentinel(list(t.sentinels), sentinel_kwargs=sentinel_kwargs)
        self.client = self.new_client()

    def new_client(self, *, retry: bool = True) -> redis.Redis:
        """A client with a pool of its own: the request client, or (``retry=False``) the pub/sub one, whose broken
        connection must surface (redis-py would re-subscribe silently, and the events in between would be lost)."""
        kwargs = self._kwargs if retry else {**self._kwargs, "retry": Retry(NoBackoff(), 0)}
        if self._sentinel is not None:
            assert self.target.service is not None
            client: redis.Redis = self._sentinel.master_for(self.target.service, **kwargs)
            return client
        return redis.Redis(host=self.target.host, port=self.target.port, **kwargs)

    def primary(self) -> tuple[str, int] | None:
        """With Sentinel: the primary's address as the Sentinels report it now (raises a DiscoveryError)."""
        if self._sentinel is None or self.target.service is None:
            return None
        try:
            address = self._sentinel.discover_master(self.target.service)
        except (rx.RedisError, OSError) as e:
            raise translate(e, "primary lookup", self.target) from None
        return (str(address[0]), int(address[1]))

    def follow_primary(self) -> None:
        """(Sentinel) the Sentinels name a new primary: drop the request connection, so that the next request asks
        them again instead of going on with the old primary (still accepting writes when it was cut off)."""
        try:
            self.client.connection_pool.disconnect(inuse_connections=True)
        except Exception as e:  # never raises: the next request reconnects in any case
            log.debug("dropping the request connection failed: %s", e)

    def call(self, what: str, fn: Callable[[redis.Redis], _T]) -> _T:
        """``fn(client)`` on the one request connection, within about the URL's timeout; errors translated."""
        if not self.lock.acquire(timeout=self.target.timeout):
            raise DiscoveryUnavailable(
                f"redis {what} at {self.target.where}: the connection stayed busy for {self.target.timeout}s"
            )
        try:
            return fn(self.client)
        except (rx.RedisError, OSError) as e:
            raise translate(e, what, self.target) from None
        finally:
            self.lock.release()

    def close(self) -> None:
        for client in (self.client,):
            try:
                client.close()
                client.connection_pool.disconnect()
            except Exception as e:  # closing must never raise
                log.debug("closing the redis client failed: %s", e)
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                try:
                    s.connection_pool.disconnect()
                except Exception as e:
                    log.debug("closing a Sentinel client failed: %s", e)


#: The keyspace-event classes the watches need: K keyspace channel, g generic (del, expire), h hash (hset),
#: x expired, e evicted. ``A`` stands for every class but K/E/m/n.
NEEDED_EVENTS = "Kghxe"
_ALL = set("g$lshzxetd")


def has_events(flags: str) -> bool:
    have = set(flags) | (_ALL if "A" in flags else set())
    return all(c in have for c in NEEDED_EVENTS)


def enable_events(link: Link) -> bool:
    """Make sure the server publishes the keyspace events the watches need; False if that is not allowed.

    Reads ``notify-keyspace-events`` and adds the missing classes with ``CONFIG SET`` (the server's other
    classes stay). False when CONFIG is refused (renamed, disabled, or not permitted to this user): the
    watches then poll. Other errors (unreachable) are raised.
    """

    def configure(client: redis.Redis) -> bool:
        try:
            current = str(client.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
            if has_events(current):
                return True
            merged = "".join(sorted(set(current) | set(NEEDED_EVENTS)))
            client.config_set("notify-keyspace-events", merged)
            return True
        except rx.ResponseError as e:
            if isinstance(e, rx.ReadOnlyError) or not _refused(str(e)):
                raise
            log.warning(
                "redis at %s refuses CONFIG (%s): watches poll every %ss instead of waiting for keyspace events "
                "(set notify-keyspace-events to include %s on the server and add events=server to the URL)",
                link.target.where,
                e,
                link.target.poll,
                NEEDED_EVENTS,
            )
            return False

    return link.call("config", configure)


def _refused(text: str) -> bool:
    lowered = text.lower()
    return "unknown command" in lowered or "noperm" in lowered or "no permissions" in lowered or "protected" in lowered
