"""Profile the client's per-call path with pyinstrument (``pip install pyinstrument``).

A raw server process; in this process, unary calls through connect() with its defaults (or
``--bare``: every default middleware off) under the profiler. Not part of ``make bench``.

    python -m benchmarks.hot_path [--calls 20000] [--concurrency 64] [--bare] [--html FILE]
"""

from __future__ import annotations

import argparse
import asyncio

import gz

from .features import settings_without_middleware
from .harness import Children, Samples, load_round, serving, unary


async def profile(calls: int, concurrency: int, bare: bool, html: str | None) -> None:
    from pyinstrument import Profiler

    with Children() as children:
        (address,) = await serving(children.server("raw"))
        settings = settings_without_middleware() if bare else None
        async with gz.connect(f"direct:///{address}", settings=settings) as channel:
            call = unary(channel)
            await load_round(call, 500, 8, Samples())  # connect and warm up, not profiled
            profiler = Profiler(interval=0.0002, async_mode="enabled")
            with profiler:
                await load_round(call, calls, concurrency, Samples())
    if html:
        profiler.write_html(html)
    print(profiler.output_text(unicode=True, show_all=False, short_mode=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bare", action="store_true", help="default middleware switched off")
    parser.add_argument("--html", help="also write an HTML report here")
    args = parser.parse_args()
    asyncio.run(profile(args.calls, args.concurrency, args.bare, args.html))


if __name__ == "__main__":
    main()
