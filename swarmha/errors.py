"""The one exception tree of swarmha.

::

    SwarmHAError
     ├── ConfigurationError (ValueError)        bad argument: ttl <= 0, renew_deadline >= ttl, ...
     │    └── InvalidDiscoveryURL               a discovery URL that cannot be parsed; names the bad part
     │         └── UnknownBackend               a scheme no installed backend registered
     ├── BackendNotInstalled (ImportError)      the backend's optional extra is missing (pip install swarmha[etcd])
     └── DiscoveryError                         the store failed an operation
          ├── DiscoveryUnavailable              the store did not answer (down, partitioned, timed out): retryable
          └── SessionExpired                    the lease/session is gone: every key bound to it is gone too

Election code never lets a :class:`DiscoveryError` end a campaign: it demotes if it was leading,
backs off, and campaigns again. Everything a caller passes in that is wrong raises a
:class:`ConfigurationError` at once, before anything is started.
"""

from __future__ import annotations

__all__ = [
    "BackendNotInstalled",
    "ConfigurationError",
    "DiscoveryError",
    "DiscoveryUnavailable",
    "InvalidDiscoveryURL",
    "SessionExpired",
    "SwarmHAError",
    "UnknownBackend",
]


class SwarmHAError(Exception):
    """Base class of every error swarmha raises on purpose."""


class ConfigurationError(SwarmHAError, ValueError):
    """A bad argument (ttl, deadline, address...). The message names the bad part."""


class InvalidDiscoveryURL(ConfigurationError):
    """A discovery URL that cannot be parsed. The message names the URL and the bad part."""


class UnknownBackend(InvalidDiscoveryURL):
    """A discovery URL whose scheme no installed backend registered."""


class BackendNotInstalled(SwarmHAError, ImportError):
    """The backend exists but its client library is missing; the message names the extra to install."""


class DiscoveryError(SwarmHAError):
    """The discovery store failed an operation."""


class DiscoveryUnavailable(DiscoveryError):
    """The store could not be reached or did not answer in time. Retrying later may succeed."""


class SessionExpired(DiscoveryError):
    """The session (lease) no longer exists in the store; keys bound to it are gone."""
