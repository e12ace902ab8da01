"""How far one Adam step moves a policy: the approx KL (k3, summed over action dims, mean over states) between the policy
before and after 1–3 Adam steps on a PPO surrogate with random advantages, for an SFT'd state policy and a fresh
one, at several learning rates. Adam's first steps move every parameter by about the learning rate whatever the
gradient's size, so the KL of a first step depends on the network, not on the advantages' signal.

    python benchmarks/first_step_kl.py --sft runs/teachers/push-v3_s0_d10/sft --demos runs/teachers/push-v3_s0_d10/demos
"""

from __future__ import annotations

import argparse

import torch

from vlaforge.data.demos import load_demos
from vlaforge.policies import build_policy, load_policy
from vlaforge.types import Observation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft", required=True, help="an SFT'd state-backbone policy (pipeline.privileged_teacher's sft/)")
    ap.add_argument("--demos", required=True, help="the demos it was SFT'd on (their states are the batch)")
    ap.add_argument("--lrs", default="3e-4,1e-4,3e-5")
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = load_demos(a.demos)
    g = torch.Generator().manual_seed(0)
    for start in ("sft", "fresh"):
        for lr in [float(x) for x in a.lrs.split(",")]:
            torch.manual_seed(0)
            pol = load_policy(a.sft) if start == "sft" else build_policy("tiny", state_dim=d.state.shape[1],
                                                                          action_dim=d.actions.shape[-1], backbone="state")
            st = torch.as_tensor(d.state[torch.randperm(len(d.state), generator=g)[:a.batch]], dtype=torch.float32)
            obs = Observation(torch.zeros(len(st), 1, 1, 1, 3, dtype=torch.uint8), st, ["x"] * len(st),
                              torch.zeros(len(st), dtype=torch.long))
            with torch.no_grad():
                out = pol.act(obs)
            lp_old, adv = out.log_prob.sum(-1), torch.randn(len(st), 1)
            params = [p for n, p in pol.named_parameters() if not n.startswith("value_net")]
            opt = torch.optim.Adam(params, lr=lr)
            kls = []
            for _ in range(3):
                lp = pol.evaluate(obs, out.taken)[0].sum(-1)
                loss = -((lp - lp_old).exp() * adv).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                with torch.no_grad():
                    r = pol.evaluate(obs, out.taken)[0].sum(-1) - lp_old
                    kls.append(float(((r.exp() - 1) - r).mean()))
            print(f"{start:5s} lr {lr:g}: approx KL after 1, 2, 3 Adam steps: " + ", ".join(f"{k:.4f}" for k in kls))


if __name__ == "__main__":
    main()
