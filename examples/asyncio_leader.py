"""asyncio: a leader does fenced work; a follower reports who leads. One process, the embedded backend.

    python examples/asyncio_leader.py [--db PATH]

The "downstream system" here is a tiny store that remembers the highest fencing token it has seen and
refuses writes carrying a lower one: the pattern that keeps a deposed leader from doing harm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

import swarmha


class FencedStore:
    """Accepts a write only if its token is at least the highest seen so far."""

    def __init__(self) -> None:
        self.highest = 0
        self.writes: list[tuple[int, str]] = []

    def write(self, token: int, value: str) -> bool:
        if token < self.highest:
            return False
        self.highest = token
        self.writes.append((token, value))
        return True


async def lead(discovery: swarmha.Discovery, node: str, store: FencedStore, terms: int) -> None:
    async with swarmha.aio.Candidate(discovery, "example/leader", node, ttl=2.0) as candidate:
        async for elected in candidate.run_for_election():
            term = candidate.term
            if not elected or term is None:
                continue
            accepted = store.write(term.token, f"{node} was here")
            print(f"{node}: elected with token {term.token}; write accepted: {accepted}")
            terms -= 1
            if terms == 0:
                return  # leaving the `async with` stops the candidate and releases the key
            await candidate.resign()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="sqlite file (default: a new temporary file)")
    args = parser.parse_args()
    if args.db:
        await run(args.db)
    else:
        with tempfile.TemporaryDirectory(prefix="swarmha-") as workdir:  # removed with the file when done
            await run(os.path.join(workdir, "election.db"))


async def run(db: str) -> None:
    discovery = swarmha.connect(f"sqlite://{db}")
    store = FencedStore()
    async with swarmha.aio.Follower(discovery, "example/leader") as follower:

        async def report() -> None:
            async for leader in follower.follow_election():
                print(f"follower: {'no leader' if leader is None else f'{leader.node} leads (token {leader.token})'}")

        reporter = asyncio.create_task(report())
        await asyncio.gather(lead(discovery, "alpha", store, 2), lead(discovery, "beta", store, 2))
        reporter.cancel()
    print(f"fenced store accepted {len(store.writes)} writes, tokens {[t for t, _ in store.writes]}")
    stale = store.writes[0][0]
    print(f"a deposed leader with token {stale} would now be refused: {not store.write(stale, 'late')}")
    discovery.close()


if __name__ == "__main__":
    asyncio.run(main())
