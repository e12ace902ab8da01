"""Replay bytes per transition and CPU time per gradient step of SAC and DSRL on Meta-World reach-v3 (64×64,
one camera), for docs/offpolicy.md. One batch of 2 episodes is collected with a random-weight tiny VLA,
turned into replay rows, then 10 gradient steps are timed (process CPU time, one torch thread).

    OMP_NUM_THREADS=1 python benchmarks/offpolicy_cost.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vlaforge.algos import get_algo
from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy
from vlaforge.rollout.collect import collect

SETTINGS = [("sac", "gaussian", "privileged", 64), ("sac", "gaussian", "privileged", 256), ("dsrl", "flow", "features", 256)]


def main() -> None:
    torch.set_num_threads(1)
    venv = make_vec_env("metaworld", 2, tasks="reach-v3", max_steps=40)
    sp = venv.spec
    for algo, head, critic, bs in SETTINGS:
        torch.manual_seed(0)
        p = build_policy(head=head, chunk_size=4, state_dim=sp.state_dim, action_dim=sp.action_dim, image_size=64)
        a = get_algo(algo)
        cfg = a.config(critic=critic, batch_size=bs, utd=0.01)
        st = a.new_state(p, cfg)
        r, _ = collect(p, venv, np.array([0, 0]), np.array([1, 2]))
        b, _ = a.prepare(r, cfg)
        g, opt = torch.Generator().manual_seed(0), torch.optim.Adam(p.parameters())
        a.update(p, opt, b, cfg, 0, g, state=st)
        cfg.utd = 10  # one new row -> 10 gradient steps
        t = time.process_time()
        a.update(p, opt, b.index(torch.arange(1)), cfg, 1, g, state=st)
        ms = (time.process_time() - t) / 10 * 1000
        print(f"{algo} head={head} critic={critic} batch={bs}: {st.online.bytes_per_transition} bytes/transition, "
              f"{ms:.1f} CPU ms per gradient step")
    venv.close()


if __name__ == "__main__":
    main()
