"""The attack's speed benchmark; the same as ``resistclf bench``.

    python benchmarks/bench_attack.py --root ../shared/data --out results/bench
"""

import sys

from resistclf.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
