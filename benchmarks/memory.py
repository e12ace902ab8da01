"""Peak memory and time of one RL (PPO) update of a Hugging Face VLM policy, per memory switch.

For each model size (a random LLaVA-style SigLIP + Llama model built offline by
``vlaforge.policies.hf.tiny``) and each combination of switches, a FRESH Python process builds
the policy, makes a synthetic batch of B decision steps (random 32x32 images, the policy's own
sampled action tokens, random advantages and returns), and runs two PPO updates (1 epoch, one
minibatch of B steps, token head, value loss on). Measured:

* ``weights_mb``: bytes of the policy's parameters and buffers (counted, not sampled).
* ``update_peak_mb``: peak RSS during the FIRST update minus RSS just before it: gradients,
  optimizer moments (allocated at the first step) and activations. RSS is sampled every 1 ms
  from /proc/self/statm by a thread (tracemalloc does not see torch's allocator).
* ``update_s``: wall time of the SECOND update (steady state).

On a CPU, "memory" is host RAM; ``optimizer_on_cpu`` therefore cannot save anything here (its
saving is accelerator memory) and is listed to show its overhead only. No GPU was available.

    python benchmarks/memory.py --out docs/bench/memory.json            # all sizes (~5 min, 2 cores)
    python benchmarks/memory.py --sizes s --out /tmp/m.json             # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

SIZES = {  # name -> (hidden, layers, vision_hidden, vision_layers)
    "s": (256, 4, 128, 2),
    "m": (512, 6, 256, 2),
    "l": (1024, 8, 512, 2),
}
COMBOS = {  # name -> (HFConfig overrides, freeze_backbone)
    "full": ({}, False),
    "full+ckpt": ({"gradient_checkpointing": True}, False),
    "lora": ({"lora_rank": 16}, False),
    "lora+ckpt": ({"lora_rank": 16, "gradient_checkpointing": True}, False),
    "lora+ckpt+autocast": ({"lora_rank": 16, "gradient_checkpointing": True, "autocast": True}, False),
    "lora+ckpt+bf16": ({"lora_rank": 16, "gradient_checkpointing": True, "autocast": True,
                        "weights_dtype": "bfloat16"}, False),
    "lora+ckpt+bf16+micro2": ({"lora_rank": 16, "gradient_checkpointing": True, "autocast": True,
                               "weights_dtype": "bfloat16", "micro_batch": 2}, False),
    "lora+separate_critic": ({"lora_rank": 16, "critic": "separate"}, False),
    "lora+opt_on_cpu": ({"lora_rank": 16, "optimizer_on_cpu": True}, False),
    "frozen_backbone": ({}, True),
}
LARGE_COMBOS = ("full", "lora", "lora+ckpt", "lora+ckpt+bf16", "frozen_backbone")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples RSS every ``dt`` seconds in a thread; ``peak`` is the largest value seen."""

    def __init__(self, dt: float = 0.001):
        self.dt, self.peak, self._stop = dt, rss(), threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.dt)

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())


def run_one(size: str, combo: str, batch: int) -> dict:
    """One (size, combo) measurement in this process."""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from vlaforge.algos import get_algo
    from vlaforge.algos.common import StepBatch
    from vlaforge.policies.hf import HFVLA, HFConfig, make_tiny_vlm
    from vlaforge.policies.hf.families import detect_family
    from vlaforge.types import Observation

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    hidden, layers, vh, vl = SIZES[size]
    over, freeze = COMBOS[combo]
    torch.manual_seed(0)
    model, tok, ip = make_tiny_vlm("llava", hidden=hidden, layers=layers, vision_hidden=vh, vision_layers=vl,
                                   heads=8, n_action_tokens=256)
    cfg = HFConfig(path="(tiny llava)", n_bins=256, max_text_tokens=80, chunk_size=4, head_hidden=256, **over)
    policy = HFVLA(cfg, loaded=(detect_family(model.config), model, tok, ip))
    del model
    if freeze:
        for p in policy.backbone_parameters():
            p.requires_grad_(False)
    n_params = sum(p.numel() for p in policy.vlm.parameters())
    n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    g = torch.Generator().manual_seed(0)
    obs = Observation(torch.randint(0, 255, (batch, 1, 32, 32, 3), dtype=torch.uint8, generator=g),
                      torch.randn(batch, 2, generator=g), ["pick up the red block and place it in the bowl"] * batch,
                      torch.zeros(batch, dtype=torch.long))
    out = policy.act(obs)
    seq = policy._inputs(obs)["input_ids"].shape[1] + cfg.chunk_size * cfg.action_dim - 1
    sb = StepBatch(images=obs.images, state=obs.state, instructions=obs.instructions, task_ids=obs.task_ids,
                   taken=out.taken, actions=out.actions, chunk_mask=torch.ones(batch, cfg.chunk_size, dtype=torch.bool),
                   logp_old=out.log_prob, v_old=out.value, adv=torch.randn(batch, generator=g),
                   returns=torch.randn(batch, generator=g), episode=torch.arange(batch), t=torch.zeros(batch, dtype=torch.long))
    weights = sum(t.numel() * t.element_size() for t in list(policy.parameters()) + list(policy.buffers()))
    opt = policy.optimizer_class()([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    algo = get_algo("ppo")
    pcfg = algo.config(critic_warmup=0, epochs=1, minibatch_size=batch, kl_guard=None)
    before = rss()
    with PeakRSS() as pk:
        m = algo.update(policy, opt, sb, pcfg, 0, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    algo.update(policy, opt, sb, pcfg, 1, torch.Generator().manual_seed(1))
    dt = time.perf_counter() - t0
    assert m["train/optimizer_steps"] == 1, m
    return {"size": size, "combo": combo, "params": n_params, "trainable": n_train, "hidden": hidden, "layers": layers,
            "batch": batch, "seq_tokens": int(seq), "weights_mb": weights / 2**20,
            "update_peak_mb": (pk.peak - before) / 2**20, "update_s": dt}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="s,m,l")
    ap.add_argument("--combos", default=None, help="comma-separated subset of the switch combinations")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="docs/bench/memory.json")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "COMBO"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one[0], a.one[1], a.batch)))
        return
    rows = []
    for size in a.sizes.split(","):
        for combo in (a.combos.split(",") if a.combos else COMBOS if size != "l" else LARGE_COMBOS):
            env = {**os.environ, "OMP_NUM_THREADS": "2"}
            p = subprocess.run([sys.executable, __file__, "--one", size, combo, "--batch", str(a.batch)],
                               capture_output=True, text=True, env=env)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                raise SystemExit(f"{size}/{combo} failed:\n{p.stderr[-2000:]}")
            r = json.loads(line[0][7:])
            rows.append(r)
            print(f"{size:2} {combo:24} params {r['params'] / 1e6:6.1f}M trainable {r['trainable'] / 1e6:6.2f}M "
                  f"weights {r['weights_mb']:7.1f} MB  update peak +{r['update_peak_mb']:7.1f} MB  "
                  f"update {r['update_s']:6.2f} s", flush=True)
    import torch
    import transformers

    meta = {"command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": f"{os.cpu_count()} CPU cores, no GPU",
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "memory": "RSS sampled every 1 ms (/proc/self/statm), fresh process per row"}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    from vlaforge.fsutil import atomic_write_text

    atomic_write_text(a.out, json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
