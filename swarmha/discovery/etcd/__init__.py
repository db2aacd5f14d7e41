"""``etcd://h1:2379,h2:2379/prefix``: the etcd v3 backend (gRPC API, etcd 3.4 or later).

URL: ``etcd://[user:password@]host[:port][,host[:port]...]/prefix[?options]``; the default port is 2379 and
the path is the key prefix (``/prefix/svc/leader`` in etcd). Query options:

``timeout=SECONDS``  bound of every request, failover included (default 5).
``ca=PATH``          PEM CA bundle to verify the servers; turns TLS on.
``cert=PATH``, ``key=PATH``  PEM client certificate and key (both or neither); turn TLS on.
``tls=1``            TLS with the system CA roots (when no ``ca`` is given).
``prepare=0``        no tickets (:meth:`EtcdDiscovery.prepare`): a waiting candidate grants no lease ahead.

With ``user:password@`` the backend authenticates (etcd's ``Authenticate`` RPC) and sends the token with every
call, authenticating again when the server rejects an expired token. Unknown options are refused.

How the contract maps to etcd:

* A :class:`~swarmha.discovery.Session` is an etcd **lease** of ``ceil(ttl)`` seconds (etcd leases are whole
  seconds, and the server raises a TTL below its minimum, 1.5 x the election timeout ~ 2 s by default, to that
  minimum: a key can outlive ``ttl`` by that much). ``keepalive`` is one ``LeaseKeepAlive`` round trip and
  raises :class:`~swarmha.errors.SessionExpired` when the server reports the lease gone (TTL <= 0).
* ``create`` is one transaction: ``create_revision(key) == 0`` -> put with the lease. The fencing token is the
  key's ``create_revision``, i.e. the revision of the acquiring write; etcd revisions strictly increase over
  the whole store, so tokens do too. ``delete`` is a transaction ``create_revision(key) == token`` -> delete.
  ``release`` (a leader's graceful exit) revokes the lease: one write that removes the key with it.
* ``watch`` starts an etcd watch at the revision right after the read that produced ``seen`` (remembered per
  key from the last ``get``/``create``; otherwise read again first), so no change in between is missed. When the
  stream breaks it is resumed from the last revision it delivered, on the next endpoint if need be; when that
  revision was compacted the key is read again and the watch fires if it differs. If no endpoint takes the
  watch back within ``timeout``, :meth:`Watch.wait` raises :class:`~swarmha.errors.DiscoveryUnavailable`.
* Endpoints are tried in the URL's order, starting with the last one that answered; a call that finds its
  endpoint unreachable moves on to the next one within the same ``timeout``. Requests that may have been
  applied before the connection broke are retried only where that is safe (``create`` recognises a key its
  own lease already holds; ``delete`` and ``put`` are idempotent).

Failure modes: every gRPC error is translated: unreachable, timed out, no leader -> ``DiscoveryUnavailable``;
lease not found -> ``SessionExpired``; anything else (permission denied, bad request) -> ``DiscoveryError``.
The modules: :mod:`._client` (channels, failover, auth, errors, the read cache), :mod:`._session` (a lease),
:mod:`._watch` (the shared watch stream), :mod:`._discovery` (the contract over those).

Threads: one ``swarmha-etcd-watch`` thread per Discovery, running one gRPC watch stream for every open watch
(etcd multiplexes watchers on a stream), while any watch is open; joined by ``close``. One gRPC channel per
endpoint, opened when first used.

Client library: ``etcd-sdk-python`` (``import pyetcd``), the maintained fork of python-etcd3 that runs on
protobuf >= 4 (``etcd3`` 0.12 does not). This module uses only its generated gRPC stubs (``pyetcd.etcdrpc``)
and drives failover, deadlines, auth refresh and watch resumption itself: the package's client class shares one
watch stream and an unnamed, never-joined thread per client, parks a failed endpoint for minutes, and lets some
raw gRPC errors through. The package does not declare its ``protobuf`` dependency; ``swarmha[etcd]`` does.
"""

from swarmha.discovery.etcd._client import DEFAULT_PORT
from swarmha.discovery.etcd._discovery import DEFAULT_TIMEOUT, EtcdDiscovery

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "EtcdDiscovery"]
