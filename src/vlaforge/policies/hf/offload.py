"""AdamW whose state lives in host memory: the ``optimizer_on_cpu`` memory switch.

For every trainable parameter the optimizer keeps an fp32 master copy and both Adam moments on
the CPU (12 bytes per parameter that never touch the accelerator). ``step()`` copies each
gradient to the host, runs ``torch.optim.AdamW``'s maths on the master copy, and writes the
result back into the device parameter (in its own dtype). The cost is two host<->device copies
of the trainable parameters per step, small with LoRA (the trainable set is ~1% of the model).
On a CPU-only machine it changes nothing but adds the master copy; it is for GPUs.
Like DeepSpeed's ZeRO-Offload but without its fused CPU Adam kernel or overlap of copies.
"""

from __future__ import annotations

import torch
from torch.optim.adamw import adamw


class CPUOffloadAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def load_state_dict(self, state_dict):
        """As torch's, but the state stays in host memory in fp32 (torch would cast it to each
        parameter's device and dtype)."""
        super().load_state_dict(state_dict)
        saved = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved, params):  # replace torch's cast copies by the saved tensors themselves
            if i in state_dict["state"]:
                self.state[p] = {k: v.detach().to("cpu", torch.float32, copy=True) if isinstance(v, torch.Tensor)
                                 else v for k, v in state_dict["state"][i].items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            masters, grads, m1, m2, steps = [], [], [], [], []
            live = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["master"] = p.detach().to("cpu", torch.float32, copy=True)
                    st["exp_avg"] = torch.zeros_like(st["master"])
                    st["exp_avg_sq"] = torch.zeros_like(st["master"])
                masters.append(st["master"])
                grads.append(p.grad.detach().to("cpu", torch.float32))
                m1.append(st["exp_avg"])
                m2.append(st["exp_avg_sq"])
                steps.append(st["step"])
                live.append(p)
            if not live:
                continue
            adamw(masters, grads, m1, m2, [], steps, foreach=False, capturable=False,
                                          differentiable=False, fused=None, grad_scale=None, found_inf=None,
                                          amsgrad=False, beta1=group["betas"][0], beta2=group["betas"][1],
                                          lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                                          maximize=False)
            for p, w in zip(live, masters):
                p.copy_(w.to(p.device, p.dtype))
        return loss
