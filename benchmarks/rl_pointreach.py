"""RL on PointReach: each algorithm from one SFT start, success before/after on held-out
evaluation seeds (training tasks and the held-out colour/instruction split), env steps, wall
time, learning curves.

    python benchmarks/rl_pointreach.py --out docs/bench/rl_pointreach.json --plot docs/bench/rl_pointreach.png
    python benchmarks/rl_pointreach.py --backbone state --privileged --sft-steps 0 --out docs/bench/rl_pointreach_state.json
    python benchmarks/rl_pointreach.py --backbone state --privileged --sft-steps 4 --demo-episodes 20 --lr 1e-4 \
        --minibatch-size 64 --iterations 30 --out docs/bench/rl_pointreach_state_sft.json
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rl_common import add_args, plot, run_algos, write  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    ap.add_argument("--privileged", action="store_true", help="goal offset in the state (for --backbone state)")
    ap.add_argument("--radius", type=float, default=0.0,
                    help="success radius for RL and evaluation (0 = the suite's 0.12); demos keep the default")
    ap.add_argument("--shaping", type=float, default=0.0,
                    help="weight of the potential-based progress reward in RL (0 = sparse success only)")
    a = ap.parse_args()
    env_kw = {"privileged": True, "radius": 0.2} if a.privileged else {}
    if a.radius:
        env_kw["radius"] = a.radius
    if a.shaping:
        env_kw["shaping"] = a.shaping
    name = "pointreach" + ("_state" if a.backbone == "state" else "") + ("_sft" if a.backbone == "state" and a.sft_steps else "") + (f"_r{a.radius:g}" if a.radius else "") + (f"_shape{a.shaping:g}" if a.shaping else "")
    res = run_algos(a, Path(a.work) / name, "pointreach", "train", "all", env_kw, {})
    write(res, a.out)
    if a.plot:
        plot(res, a.plot, "PointReach, state-only policy from scratch" if a.backbone == "state"
             else "PointReach: RL from one SFT start")
