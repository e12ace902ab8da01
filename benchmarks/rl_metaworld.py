"""RL on Meta-World MT1 tasks: PPO, GRPO and RLOO from one SFT start per task set, success
before/after on fixed evaluation seeds, env steps, wall time, learning curves.

    python benchmarks/rl_metaworld.py --tasks reach-v3 --out docs/bench/rl_metaworld_reach.json
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rl_common import add_args, plot, run_algos, write  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap, algos="ppo,grpo,rloo", iterations=8, groups=4, group_size=8, num_envs=8, workers=2,
             sft_steps=1200, eval_episodes=20, demo_noise=0.1)
    ap.add_argument("--tasks", default="reach-v3")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--shaping", type=float, default=0.0,
                    help="weight of the potential-based reward from Meta-World's own shaped reward (0 = sparse)")
    a = ap.parse_args()
    env_kw = {"max_steps": a.max_steps, **({"shaping": a.shaping} if a.shaping else {})}
    res = run_algos(a, Path(a.work) / ("metaworld_" + a.tasks.replace(",", "+")), "metaworld", a.tasks, a.tasks,
                    env_kw, {"max_steps": a.max_steps})
    write(res, a.out)
    if a.plot:
        plot(res, a.plot, f"Meta-World {a.tasks}: RL from one SFT start")
