"""Context-manager support shared by every object with one stop mechanism (``close()`` or ``stop()``)."""

from __future__ import annotations

from typing import Self

__all__ = ["AsyncStopsOnExit", "ClosesOnExit", "StopsOnExit"]


class ClosesOnExit:
    """``with obj:`` calls ``obj.close()`` on exit, whatever happened inside."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StopsOnExit:
    """``with obj:`` calls ``obj.stop()`` on exit, whatever happened inside."""

    def stop(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class AsyncStopsOnExit:
    """``async with obj:`` awaits ``obj.stop()`` on exit, whatever happened inside."""

    async def stop(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
