"""π0 at its real widths on the CPU, cut to one layer per stack: the shapes and switches of the real model checked
without a GPU (``gpu_train.py`` case (f) runs the full depth on one).

PaliGemma's Gemma 2B layer (width 2048, 8 heads of 256, 1 kv head, MLP 16,384, vocabulary 257,152), the 300M
expert's layer (width 1024, MLP 4096), one SigLIP So400m layer at 224 px (256 image tokens per camera), chunk 50,
max dims 32, two cameras in LIBERO's shape (8-D state, 7-D actions; the 128x160 frames are resized with centred
padding), LoRA r=4 on the expert and the projections, frozen weights in bf16, bf16 autocast, gradient checkpointing:
build, ``act`` (2 SDE steps), ``evaluate`` of the stored chain, one SFT backward. Prints the parameter count, whether
re-scoring reproduced the rollout's log-probs, which parameters got gradients, the process CPU time and peak RSS.
Random weights and synthetic observations: nothing is downloaded.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/pi0_real_width.py
"""

from __future__ import annotations

import resource
import time

import torch

from vlaforge.policies.pi0 import Pi0, Pi0Config, configs
from vlaforge.policies.pi0.model import GEMMA_VARIANTS
from vlaforge.types import Observation


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lr, tok = configs(state_dim=8, action_dim=7, views=2, real_size=True, chunk_size=50, n_action_steps=8, num_steps=2)
    lr["paligemma_variant"] = dict(GEMMA_VARIANTS["gemma_2b"], depth=1)
    lr["action_expert_variant"] = dict(GEMMA_VARIANTS["gemma_300m"], depth=1)
    lr["vision_config"] = {"num_hidden_layers": 1}
    t0 = time.process_time()
    p = Pi0(Pi0Config(lerobot=lr, lora_rank=4, autocast=True, weights_dtype="bfloat16", gradient_checkpointing=True),
            tok)
    print(f"built: {sum(x.numel() for x in p.parameters()) / 1e6:.1f}M parameters, "
          f"{time.process_time() - t0:.1f} CPU s")
    g = torch.Generator().manual_seed(0)
    obs = Observation(torch.randint(0, 255, (2, 2, 128, 160, 3), dtype=torch.uint8, generator=g),
                      torch.randn(2, 8, generator=g), ["put the bowl on the plate", "open the drawer"],
                      torch.zeros(2, dtype=torch.long))
    out = p.act(obs)
    lp, _, _ = p.evaluate(obs, out.taken)
    print(f"act: actions {tuple(out.actions.shape)}, chain {tuple(out.taken['chain'].shape)}; "
          f"max |evaluate - rollout log-prob| = {(lp - out.log_prob).abs().max().item():.3g}")
    p.train()
    loss, _ = p.sft_loss(obs, out.actions)
    loss.backward()
    got = [n for n, x in p.named_parameters() if x.grad is not None and x.grad.abs().sum() > 0]
    print(f"SFT loss {loss.item():.4f}; {len(got)} parameter tensors got gradients, all LoRA or value head: "
          f"{all('lora_' in n or 'value_net' in n for n in got)}")
    print(f"process CPU {time.process_time() - t0:.1f} s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
