"""`agentgate gateway` under tracemalloc, for scripts/bench_gateway_scale.py --tracemalloc.

  python -m scripts.traced_gateway SNAPSHOT_PREFIX [gateway flags ...]

Tracing starts before the gateway's modules load (10 frames a trace); each SIGUSR2 writes the
current snapshot to SNAPSHOT_PREFIX.N.pickle (N = 0, 1, ...), which the benchmark diffs.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc


def main() -> int:
    prefix, argv = sys.argv[1], sys.argv[2:]
    tracemalloc.start(10)
    taken = [0]

    def dump(signum, frame) -> None:
        tracemalloc.take_snapshot().dump(f"{prefix}.{taken[0]}.pickle")
        taken[0] += 1

    signal.signal(signal.SIGUSR2, dump)
    from gateway.main import main as gateway_main

    return gateway_main(argv)


if __name__ == "__main__":
    sys.exit(main())
