"""Training speed and quality per time: the same as `repytilian bench` (see repytilian/cli/bench.py).

    python benchmarks/bench_training.py                       # throughput table for tiny, default, hyper
    python benchmarks/bench_training.py --budget 90 --budget 600 --json train.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repytilian.cli.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
