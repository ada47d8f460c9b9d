"""Encoder backends, frame-to-event latency, stream capacity and naive loop vs pipeline.

A thin wrapper: the bench lives in the package (affectstream/bench.py) so that the installed
`affectstream bench` command runs it; this script runs the same thing from a checkout.

    python benchmarks/engine_bench.py --out bench.json            # ViT-B-32, random weights, CPU
    python benchmarks/engine_bench.py --quick --model tiny-random  # a smoke run
"""

from __future__ import annotations

import sys

from affectstream.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
