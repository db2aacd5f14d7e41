"""The event loop ``swarmha manage`` runs on (uvloop's when installed)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

__all__ = ["loop_factory"]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``swarmha manage`` runs on: uvloop's when it is installed, else asyncio's (None).

    uvloop does the socket work of every transport in C (the manager's CPU per forwarded request was mostly
    asyncio's selector and transport code, see docs/manager-design.md); everything the manager relies on is the
    same on both (TCP_NODELAY on every TCP socket, ``write_eof`` half-close on plain TCP, TLS, signal
    handlers, ``asyncio.timeout``), and the tests run the manager processes on uvloop and the in-process
    front and pool tests on both. ``SWARMHA_LOOP=asyncio`` in the environment forces asyncio's loop.
    """
    if os.environ.get("SWARMHA_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
