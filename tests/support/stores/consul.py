"""consul:// test store: the Consul HTTP API double (tests/support/consul_double.py) by default, a real agent
on request.

With ``SWARMHA_CONSUL_URL=consul://HOST:8500`` (optionally ``?token=...`` and the other URL parameters) the
tests run against that agent instead; it cannot be stopped from here, so ``can_stop`` is False. Against the
double, URLs carry ``session_ttl_min=1ms`` because the double plays servers configured with that minimum:
it lets tests rehearse expiry with ttls of a few seconds. A real agent keeps its own minimum (10s by default).
"""

from __future__ import annotations

import os
import urllib.parse

import pytest

from tests.support.consul_double import ConsulDouble
from tests.support.stores import fresh_prefix

ENV = "SWARMHA_CONSUL_URL"
#: The double plays Consul servers whose ``session_ttl_min`` is this (seconds; the URL parameter matches).
DOUBLE_SESSION_TTL_MIN = 0.001


def real_agent_url() -> str | None:
    """The real Consul agent named by ``SWARMHA_CONSUL_URL``, or None (the tests then use the double)."""
    return os.environ.get(ENV) or None


class ConsulStoreFixture:
    name = "consul"

    def __init__(self) -> None:
        self.real = real_agent_url()
        self.double: ConsulDouble | None = None
        if self.real is None:
            self.double = ConsulDouble(session_ttl_min=DOUBLE_SESSION_TTL_MIN).start()
        self.can_stop = self.double is not None

    def url(self, **params: str) -> str:
        """A consul:// URL with a fresh key prefix (plus ``params`` in the query string)."""
        prefix = fresh_prefix(self.name)
        if self.double is not None:
            return self.double.url(prefix, session_ttl_min="1ms", **params)
        assert self.real is not None
        parsed = urllib.parse.urlsplit(self.real)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        query.update(params)
        base = parsed.path.strip("/")
        path = f"/{base}/{prefix}" if base else f"/{prefix}"
        return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, urllib.parse.urlencode(query), ""))

    def stop(self) -> None:
        if self.double is None:
            raise RuntimeError("a real Consul agent cannot be stopped by the tests")
        self.double.stop()

    def start(self) -> None:
        if self.double is not None:
            self.double.start()

    def close(self) -> None:
        if self.double is not None:
            self.double.close()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> ConsulStoreFixture:
    return ConsulStoreFixture()
