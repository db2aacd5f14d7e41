"""The etcd Discovery: the contract of :mod:`swarmha.discovery._base` over a :class:`~._client.Client`."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, NoReturn

from pyetcd import etcdrpc

from swarmha.discovery._base import Claim, Discovery, Record, Session, Watch, check_key, check_ttl, done
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.etcd._batch import Batcher
from swarmha.discovery.etcd._client import Client, log, prefix_end, to_record
from swarmha.discovery.etcd._session import EtcdSession
from swarmha.discovery.etcd._watch import EtcdWatch, WatchStream
from swarmha.errors import ConfigurationError, DiscoveryError, InvalidDiscoveryURL, SessionExpired

__all__ = ["DEFAULT_TIMEOUT", "EtcdDiscovery"]

DEFAULT_TIMEOUT = 5.0
_OPTIONS = {"timeout", "ca", "cert", "key", "tls", "prepare"}


class EtcdDiscovery(Discovery):
    """Discovery over an etcd v3 cluster (see the module docstring for the URL, options and guarantees)."""

    #: Claims sent together are batched (:mod:`._batch`): 256 in flight are a few transactions. Measured (10,000
    #: keys x 3 processes, 2 cores, ``python -m benchmarks scale``): every key led in 7.6 s with 32 in flight and
    #: one batch at a time, 4.5-5.6 s with 256 and up to four batches.
    request_window = 256

    def __init__(self, url: DiscoveryURL) -> None:
        if url.scheme != "etcd":
            raise InvalidDiscoveryURL(f"discovery URL {str(url)!r} is not an etcd:// URL")
        if not url.hosts:
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r} names no host: etcd://host[:port][,host...]/prefix")
        url.check_options(_OPTIONS)
        self.url = url
        self.timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        self._client = Client(url, self.timeout)
        self._prefix = (url.path + "/") if url.path else ""
        prepare = url.params.get("prepare", "1")
        if prepare not in ("0", "1"):
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r}: prepare must be 0 or 1, not {prepare!r}")
        self._prepare = prepare == "1"
        self._stream = WatchStream(self._client)
        self._claims = Batcher(self._client, inline=True)

    def _k(self, key: str) -> bytes:
        return (self._prefix + check_key(key)).encode()

    @staticmethod
    def _own(session: Session) -> EtcdSession:
        """``session`` as an etcd session; ConfigurationError if it is another backend's."""
        if not isinstance(session, EtcdSession):
            raise ConfigurationError(f"{session!r} is not a session of an etcd discovery")
        return session

    @classmethod
    def _open(cls, session: Session) -> EtcdSession:
        """``session`` as an open etcd session, or the error that using it must raise."""
        own = cls._own(session)
        if own._closed:
            raise SessionExpired(f"lease {own.id} was closed")
        return own

    @classmethod
    def _lease(cls, session: Session) -> int:
        return cls._open(session).lease_id

    # -- the Discovery contract ------------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        """A new lease of ``ceil(ttl)`` seconds (see the module docstring for the server's minimum)."""
        return EtcdSession(self._client, check_ttl(ttl))

    def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
        """A ticket: a lease granted now, while the candidate waits, so that the claim after the holder left
        is one write (the transaction) instead of two (grant, then transaction), as long as the wait was short.

        The ticket's ``clock`` is when its lease's TTL started (the grant was sent); a claim with a ticket older
        than ``TICKET_AGE * ttl`` (1/6) first takes a new lease, exactly what a plain session costs, so the claim
        never comes more than ``ttl/6`` into the lease and the owner counts its term from ``clock``. A lease that
        was not used holds nothing and expires on its own after ``ttl``: the price is one lease grant each time a
        candidate starts waiting without a ticket (not periodic). ``prepare=0`` in the URL turns tickets off.
        Never raises: None when etcd could not be reached.
        """
        if not self._prepare:
            return None
        try:
            return EtcdSession(self._client, check_ttl(ttl), ticket=True)
        except DiscoveryError as e:
            log.debug("no ticket for %r (the claim will grant its lease): %s", key, e)
            return None

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Put ``key`` with the session's lease if its create_revision is 0; token = revision of that put.

        With an old ticket (see :meth:`prepare`) a new lease is granted first."""
        k, request, lease = self._create_request(key, value, session)
        response = self._client.call("create", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
        return self._created(k, value, session, lease, response)

    def create_async(self, key: str, value: str, session: Session) -> Future[Record | None]:
        """:meth:`create` pipelined on the channel (an old ticket's new lease is granted inline first)."""
        try:
            k, request, lease = self._create_request(key, value, session)
        except Exception as e:
            return done(_raise, e)
        return self._client.call_async(
            "create",
            lambda ep, t, md: ep.kv.Txn.future(request, timeout=t, metadata=md),
            lambda response: self._created(k, value, session, lease, response),
        )

    def claim_async(
        self, key: str, value: str, session: Session, listing: str | None = None, *, vacant: bool = False
    ) -> Future[Claim]:
        """The claim as one transaction: put if absent, and in the same round trip the range of ``listing`` after
        the put (won), or the holder (lost). One request per candidate where the default makes two; claims made
        while another is in flight go out together as one request; a lone one is sent inline, blocking the caller
        for its round trip (see :mod:`._batch`)."""
        try:
            k, request, lease = self._create_request(key, value, session, listing)
        except Exception as e:
            return done(_raise, e)

        def answer(response: Any) -> Claim:
            created = self._created(k, value, session, lease, response)
            if not response.succeeded:  # lost (or won by our own earlier attempt: no listing then)
                kvs = response.responses[0].response_range.kvs
                return Claim(created, None if created is not None or not kvs else to_record(kvs[0]))
            listed = self._listed(response.responses[1].response_range) if listing is not None else None
            return Claim(created, None, listed)

        return self._claims.claim(k, request, answer)

    def _create_request(
        self, key: str, value: str, session: Session, listing: str | None = None
    ) -> tuple[bytes, Any, int]:
        k = self._k(key)
        own = self._open(session)
        own.fresh_for_claim()
        lease = own.lease_id
        success = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=value.encode(), lease=lease))]
        if listing is not None:
            success.append(etcdrpc.RequestOp(request_range=self._list_request(listing)))
        request = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(key=k, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL)],
            success=success,
            failure=[etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=k))],
        )
        return k, request, lease

    def _created(self, k: bytes, value: str, session: Session, lease: int, response: Any) -> Record | None:
        revision = int(response.header.revision)
        if response.succeeded:
            record = Record(value, revision, session.id)
            self._client.remember(k, record, revision)
            return record
        kvs = response.responses[0].response_range.kvs
        current = to_record(kvs[0]) if kvs else None
        self._client.remember(k, current, revision)
        if kvs and int(kvs[0].lease) == lease and current is not None and current.value == value:
            return current  # our own earlier attempt, applied before its answer was lost: it is ours
        return None

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Create or overwrite ``key`` (with the session's lease if given); the token stays the key's creation."""
        k = self._k(key)
        lease = self._lease(session) if session is not None else 0
        request = etcdrpc.TxnRequest(
            success=[
                etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=value.encode(), lease=lease)),
                etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=k)),
            ],
        )
        response = self._client.call("put", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
        record = to_record(response.responses[1].response_range.kvs[0])
        self._client.remember(k, record, int(response.header.revision))
        return record

    def get(self, key: str) -> Record | None:
        """The key's Record (token = its create_revision), read linearizably."""
        return self._client.read(self._k(key))[0]

    def get_async(self, key: str) -> Future[Record | None]:
        """:meth:`get` pipelined on the channel."""
        try:
            k = self._k(key)
        except Exception as e:
            return done(_raise, e)
        return _first(self._client.read_async(k))

    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` in one transaction iff its create_revision equals ``token``."""
        k = self._k(key)
        if token <= 0:
            return False
        request = self._delete_request(k, token)
        response = self._client.call("delete", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
        return self._deleted(k, response)

    def delete_async(self, key: str, token: int) -> Future[bool]:
        """:meth:`delete` pipelined on the channel."""
        try:
            k = self._k(key)
        except Exception as e:
            return done(_raise, e)
        if token <= 0:
            return done(bool, False)
        request = self._delete_request(k, token)
        return self._client.call_async(
            "delete",
            lambda ep, t, md: ep.kv.Txn.future(request, timeout=t, metadata=md),
            lambda response: self._deleted(k, response),
        )

    @staticmethod
    def _delete_request(k: bytes, token: int) -> Any:
        return etcdrpc.TxnRequest(
            compare=[
                etcdrpc.Compare(
                    key=k, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL, create_revision=token
                )
            ],
            success=[etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=k))],
        )

    def _deleted(self, k: bytes, response: Any) -> bool:
        deleted = bool(response.succeeded) and response.responses[0].response_delete_range.deleted > 0
        if deleted:
            self._client.remember(k, None, int(response.header.revision))
        return deleted

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key`` by revoking the session's lease: one raft write that deletes every key attached
        to the lease, ``key`` among them while it is still the one the session created (a successor's key has
        a lease of its own, so it is never touched; ``token`` is therefore not needed).

        One write instead of a compare-and-delete and a revoke: the next candidate's lease grant, sent when
        the delete event reaches it, is not queued behind our revoke's disk sync. Raises
        :class:`~swarmha.errors.DiscoveryUnavailable` when no endpoint answered: the key then goes when the
        lease expires (within its TTL). The session is closed in every case.
        """
        own = self._own(session)
        if not own._closed:
            own.revoke()

    def list(self, prefix: str) -> Mapping[str, Record]:
        request = self._list_request(prefix)
        response = self._client.call("list", lambda ep, t, md: ep.kv.Range(request, timeout=t, metadata=md))
        return self._listed(response)

    def list_async(self, prefix: str) -> Future[Mapping[str, Record]]:
        """:meth:`list` pipelined on the channel."""
        try:
            request = self._list_request(prefix)
        except Exception as e:
            return done(_raise, e)
        return self._client.call_async(
            "list", lambda ep, t, md: ep.kv.Range.future(request, timeout=t, metadata=md), self._listed
        )

    def _list_request(self, prefix: str) -> Any:
        p = self._k(prefix) + b"/"
        return etcdrpc.RangeRequest(key=p, range_end=prefix_end(p))

    def _listed(self, response: Any) -> Mapping[str, Record]:
        skip = len(self._prefix.encode())
        return {kv.key[skip:].decode(): to_record(kv) for kv in response.kvs}

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch from the revision after the read that returned ``seen`` (read again if that is unknown)."""
        k = self._k(key)
        known = self._client.known(k)
        state, changed = seen, False
        if known is not None and known[0] == seen:
            revision = known[1]
        else:
            state, revision = self._client.read(k)
            changed = state != seen
        watch = EtcdWatch(self._client, self._stream, k, state, revision + 1, changed)
        self._stream.add(watch)
        return watch

    def close(self) -> None:
        """Close every watch (and the stream's thread) and the channels. Leases are left to expire. Idempotent."""
        self._client.stop()
        self._stream.close()
        self._client.close()


def _raise(error: Exception) -> NoReturn:
    raise error


def _first(future: Future[tuple[Record | None, int]]) -> Future[Record | None]:
    """The record of a ``read_async`` (the revision dropped)."""
    result: Future[Record | None] = Future()

    def copy(f: Future[tuple[Record | None, int]]) -> None:
        error = f.exception()
        if error is None:
            result.set_result(f.result()[0])
        else:
            result.set_exception(error)

    future.add_done_callback(copy)
    return result
