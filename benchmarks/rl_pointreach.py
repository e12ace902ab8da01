"""RL on PointReach: each algorithm from one SFT start, success before/after on held-out
evaluation seeds (training tasks and the held-out colour/instruction split), env steps, wall
time, learning curves.

    python benchmarks/rl_pointreach.py --out docs/bench/rl_pointreach.json --plot docs/bench/rl_pointreach.png
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rl_common import add_args, plot, run_algos, write  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    a = ap.parse_args()
    res = run_algos(a, Path(a.work) / "pointreach", "pointreach", "train", "all", {}, {})
    write(res, a.out)
    if a.plot:
        plot(res, a.plot, "PointReach: RL from one SFT start")
