"""Prometheus metrics of a manager on ``--metrics ADDR`` (needs the optional extra ``swarmha[metrics]``)."""

from __future__ import annotations

from swarmha.errors import ConfigurationError

__all__ = ["check_installed"]


def check_installed() -> None:
    """Raise ConfigurationError naming the extra when prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "--metrics needs the prometheus_client package: pip install 'swarmha[metrics]'"
        ) from None
