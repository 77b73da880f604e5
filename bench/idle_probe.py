"""How much slower the same Python work runs after the CPU has been idle: a probe of the
machine, not of geopin, for reading the streaming figures of ``proxy_bench.py``.

A router at concurrency 1 streaming an answer sits idle between the upstream's events; the
next request then runs on a core that was idle. This times one fixed piece of Python work (a
JSON round trip of a small document, a few tens of microseconds: the size of a request's
decision and record) back to back, and after sleeps of several lengths, interleaved, on one
core. Prints medians; a ratio well above 1 means idle gaps alone make a request's work slower.

    python bench/idle_probe.py [--cpu 1] [--samples 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

DOCUMENT = {"a": [1, 2, 3] * 50, "b": {"x": "y" * 40, "z": list(range(100))}}
GAPS_S = (0.0, 0.0002, 0.001, 0.005)


def work() -> None:
    json.loads(json.dumps(DOCUMENT))


def timed(gap_s: float, samples: int) -> float:
    """Median microseconds of ``work()``, each call after sleeping ``gap_s`` (0: none)."""
    out = []
    for _ in range(samples):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        work()
        out.append(time.perf_counter() - started)
    return statistics.median(out) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, help="pin to this core")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    for _ in range(200):
        work()  # warm
    results: dict[float, list[float]] = {gap: [] for gap in GAPS_S}
    for _ in range(args.rounds):  # interleaved, so drift hits every gap alike
        for gap in GAPS_S:
            results[gap].append(timed(gap, args.samples))
    base = statistics.median(results[0.0])
    print("| idle gap before each call | median µs | vs back to back |")
    print("|---|---|---|")
    for gap in GAPS_S:
        value = statistics.median(results[gap])
        label = "none (back to back)" if gap == 0 else f"{gap * 1000:g} ms"
        print(f"| {label} | {value:.1f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
