"""The lifecycle every simulator shares: `async with Sim(...) as sim` starts it, leaving the
block closes it. `close()` is `stop()` unless a simulator has more to release (a server
certificate folder); `stop()`/`start()` on their own restart on the same port."""

from __future__ import annotations

from typing import Self


class Service:
    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
