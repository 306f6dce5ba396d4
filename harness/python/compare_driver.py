#!/usr/bin/env python3
"""pgcache's driver for the Python `postgres-cache` library, run by `pgcache-harness compare --python`.

Written for pgcache (not copied): it reproduces the procedure of the library's own benchmark,
`benchmarks/cache_benchmark.py` in its GitHub source (that file is not in the PyPI package):

- W writer and R reader clients; by default every client is its own `PostgresCache` instance (its own
  pool, listener and local cache), all connected before the run starts;
- a writer does `set(random key, {"writer", "iteration", "ts"}, ttl_seconds=ttl)`, then sleeps U(0, 5 ms);
  a reader does `get(random key)`, then sleeps U(0, 2 ms); only the call is timed, never the sleep;
- the modes: full, no local cache (`local_max_entries=0`), notify disabled (`disable_notiffy=True`, the
  0.1.1 spelling);
- the table is truncated before the run (the benchmark's `prepare`).

It prints one JSON object on stdout: every latency in nanoseconds (the Rust side builds the same
histograms as for its own rows), the hits, each kind's span from the first start to the last finish, and
the think time actually slept. Its tables are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time

import asyncpg
import postgres_cache
from postgres_cache import CacheSettings, PostgresCache
from postgres_cache.schema import resolve_schema_names


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dsn", required=True)
    p.add_argument("--mode", choices=["full", "no-local", "no-notify"], required=True)
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--readers", type=int, default=32)
    p.add_argument("--write-iterations", type=int, default=400)
    p.add_argument("--read-iterations", type=int, default=800)
    p.add_argument("--keyspace", type=int, default=64)
    p.add_argument("--ttl", type=float, default=5.0)
    p.add_argument("--write-think-max", type=float, default=0.005, help="seconds; 0 turns it off")
    p.add_argument("--read-think-max", type=float, default=0.002, help="seconds; 0 turns it off")
    p.add_argument("--shared", action="store_true", help="one PostgresCache shared by every client")
    p.add_argument("--pool-size", type=int, default=10, help="max_pool_size of the shared instance")
    p.add_argument("--schema-prefix", required=True)
    p.add_argument("--channel", required=True)
    return p.parse_args()


def settings_for(args: argparse.Namespace) -> CacheSettings:
    settings = CacheSettings(dsn=args.dsn, schema_prefix=args.schema_prefix, notify_channel=args.channel)
    if args.mode == "no-local":
        settings = dataclasses.replace(settings, local_max_entries=0)
    elif args.mode == "no-notify":
        settings = dataclasses.replace(settings, disable_notiffy=True)
    if args.shared:
        settings = dataclasses.replace(settings, max_pool_size=max(1, args.pool_size))
    return settings


async def prepare(settings: CacheSettings) -> None:
    await PostgresCache.init_db(settings)
    conn = await asyncpg.connect(dsn=settings.dsn)
    try:
        await conn.execute(f'TRUNCATE "{resolve_schema_names(settings.schema_prefix).entries_table}"')
    finally:
        await conn.close()


async def drop(settings: CacheSettings) -> None:
    names = resolve_schema_names(settings.schema_prefix)
    conn = await asyncpg.connect(dsn=settings.dsn)
    try:
        await conn.execute(
            f'DROP TABLE IF EXISTS "{names.entries_table}", "{names.schema_table}" CASCADE;'
            f'DROP FUNCTION IF EXISTS "{names.set_updated_function}"() CASCADE;'
            f'DROP FUNCTION IF EXISTS "{names.broadcast_function}"() CASCADE;'
            f'DROP FUNCTION IF EXISTS "{names.cleanup_function}"(integer) CASCADE;'
        )
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict:
    settings = settings_for(args)
    await prepare(settings)
    total = args.writers + args.readers
    if args.shared:
        shared = PostgresCache(settings)
        instances = [shared]
        clients = [shared] * total
    else:
        instances = [PostgresCache(settings) for _ in range(total)]
        clients = instances
    await asyncio.gather(*(c.connect() for c in instances))
    keys = [f"bench:{i}" for i in range(args.keyspace)]

    async def writer(client: PostgresCache, idx: int) -> tuple:
        lat, think = [], 0.0
        started = time.perf_counter()
        for iteration in range(args.write_iterations):
            key = random.choice(keys)
            payload = {"writer": idx, "iteration": iteration, "ts": time.time()}
            t = time.perf_counter_ns()
            await client.set(key, payload, ttl_seconds=args.ttl)
            lat.append(time.perf_counter_ns() - t)
            if args.write_think_max > 0:
                s = time.perf_counter()
                await asyncio.sleep(random.uniform(0, args.write_think_max))
                think += time.perf_counter() - s
        return lat, 0, started, time.perf_counter(), think

    async def reader(client: PostgresCache) -> tuple:
        lat, hits, think = [], 0, 0.0
        started = time.perf_counter()
        for _ in range(args.read_iterations):
            key = random.choice(keys)
            t = time.perf_counter_ns()
            value = await client.get(key)
            lat.append(time.perf_counter_ns() - t)
            hits += value is not None
            if args.read_think_max > 0:
                s = time.perf_counter()
                await asyncio.sleep(random.uniform(0, args.read_think_max))
                think += time.perf_counter() - s
        return lat, hits, started, time.perf_counter(), think

    try:
        tasks = [writer(c, i) for i, c in enumerate(clients[: args.writers])]
        tasks += [reader(c) for c in clients[args.writers :]]
        results = await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.close() for c in instances))
        await drop(settings)

    def kind(part: list) -> dict:
        return {
            "latencies_ns": [ns for r in part for ns in r[0]],
            "hits": sum(r[1] for r in part),
            "span_s": (max(r[3] for r in part) - min(r[2] for r in part)) if part else 0.0,
            "think_s": sum(r[4] for r in part),
        }

    return {
        "library_version": getattr(postgres_cache, "__version__", None) or package_version(),
        "instances": len(instances),
        "write": kind(results[: args.writers]),
        "read": kind(results[args.writers :]),
    }


def package_version() -> str:
    from importlib.metadata import version

    return version("postgres-cache")


def main() -> None:
    args = parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
