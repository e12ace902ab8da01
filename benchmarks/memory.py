"""Peak memory and time of one RL (PPO) update of a Hugging Face VLM policy, per memory switch.

For each model size (a random LLaVA-style SigLIP + Llama model built offline by
``vlaforge.policies.hf.tiny``) and each combination of switches, a FRESH Python process builds
the policy, makes a synthetic batch of B decision steps (random 32x32 images, the policy's own
sampled action tokens, random advantages and returns), and runs one PPO update (1 epoch, one
minibatch of B steps, token head, value loss on). Measured on the update:

* ``weights_mb``: bytes of the policy's parameters and buffers (counted).
* ``grads_mb``, ``optimizer_mb``: bytes of the gradients and optimizer state after the update (counted).
* ``activations_mb``: peak live bytes of the tensors autograd saved for backward during the update
  (``SavedActivations``: a saved-tensors hook pair; parameters excluded).
* ``accounted_mb`` = weights + gradients + optimizer state (unless kept on the host) + activations:
  what an accelerator would have to hold at the peak, up to the allocator's slack and the transient
  recompute of one checkpointed layer.
* ``rss_update_peak_mb``: peak RSS during the update minus RSS just before it, sampled every 1 ms
  from /proc/self/statm by a thread (tracemalloc does not see torch's allocator). It shows what the
  host really paid, but freed activations are reused for gradients and AdamW moments by the
  allocator, so it is not a sum of the parts.
* ``update_s``: wall time of the update (the first: it includes allocating the optimizer state).

On a CPU, "memory" is host RAM; ``optimizer_on_cpu`` therefore cannot save anything here (its
saving is accelerator memory) and is listed to show its overhead only. No GPU was available.

    python benchmarks/memory.py --out docs/bench/memory.json            # all sizes (~5 min, 2 cores)
    python benchmarks/memory.py --sizes s --out /tmp/m.json             # quick
    python benchmarks/memory.py --project docs/bench/memory.json --merge /tmp/m.json   # join files, redo 7B
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


class SavedActivations:
    """Live bytes of tensors autograd saves for backward (activations), and their peak.

    A ``saved_tensors_hooks`` pair: pack adds a storage's bytes when it is first saved, unpack (in
    backward, after which autograd frees it) removes them when its last saved use is consumed.
    Parameters' storages are excluded (weights are counted apart). Inside non-reentrant gradient
    checkpointing only the checkpoint's inputs are seen (what it keeps); recomputed activations
    live for one layer's backward and are not counted here (the RSS column sees them)."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.live, self.count, self.cur, self.peak = exclude, {}, {}, 0, 0

    def pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.exclude or t.device.type == "meta":
            return (None, t)
        if self.count.get(ptr, 0) == 0:
            self.live[ptr] = st.nbytes()
            self.cur += st.nbytes()
            self.peak = max(self.peak, self.cur)
        self.count[ptr] = self.count.get(ptr, 0) + 1
        return (ptr, t)

    def unpack(self, packed):
        ptr, t = packed
        if ptr is not None and self.count.get(ptr, 0) > 0:
            self.count[ptr] -= 1
            if self.count[ptr] == 0:
                self.cur -= self.live.pop(ptr)
        return t


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
    acts = SavedActivations({p.untyped_storage().data_ptr() for p in list(policy.parameters()) + list(policy.buffers())})
    with PeakRSS() as pk, torch.autograd.graph.saved_tensors_hooks(acts.pack, acts.unpack):
        t0 = time.perf_counter()
        m = algo.update(policy, opt, sb, pcfg, 0, torch.Generator().manual_seed(0))
        dt = time.perf_counter() - t0
    assert m["train/optimizer_steps"] == 1, m
    grads = sum(p.grad.numel() * p.grad.element_size() for p in policy.parameters() if p.grad is not None)
    optim = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    on_cpu = cfg.optimizer_on_cpu
    return {"size": size, "combo": combo, "params": n_params, "trainable": n_train, "hidden": hidden, "layers": layers,
            "batch": batch, "seq_tokens": int(seq), "weights_mb": weights / 2**20, "grads_mb": grads / 2**20,
            "optimizer_mb": optim / 2**20, "optimizer_on_host": on_cpu, "activations_mb": acts.peak / 2**20,
            "accounted_mb": (weights + grads + (0 if on_cpu else optim) + acts.peak) / 2**20,
            "rss_update_peak_mb": (pk.peak - before) / 2**20, "update_s": dt}


# OpenVLA-7B-like VLA: Llama-2-7B (32 layers, d 4096, MLP 11008) + a ~0.6B vision tower, 256 image tokens
VLA7B = {"params": 7.5e9, "layers": 32, "hidden": 4096, "mlp": 11008, "tokens_per_step": 256 + 20 + 7,
         "lora_rank": 32, "micro_batch": 8, "runtime_gb": 1.5}  # runtime_gb: CUDA context + allocator slack (assumed)


def activation_coeff(rows: list[dict], combo: str) -> float | None:
    """Measured activation bytes per (token x layer x hidden unit) saved in one update of ``combo``
    (fp32), averaged over sizes."""
    cs = [r["activations_mb"] * 2**20 / (r["batch"] * r["seq_tokens"] * r["layers"] * r["hidden"])
          for r in rows if r["combo"] == combo]
    return sum(cs) / len(cs) if cs else None


def project_7b(rows: list[dict]) -> dict:
    """Memory of one RL update of a 7B VLA under LoRA + checkpointing + shared critic + bf16, and variants."""
    v = VLA7B
    L, d, m = v["layers"], v["hidden"], v["mlp"]
    lora = L * v["lora_rank"] * (4 * (d + d) + 2 * (d + m) + (m + d))  # q,k,v,o + gate,up + down (all-linear)
    tokens = v["micro_batch"] * v["tokens_per_step"]
    c_full, c_ckpt = activation_coeff(rows, "full"), activation_coeff(rows, "full+ckpt")
    gb = 2**30  # GiB: a "24 GB" card holds 24 GiB
    parts = {
        "base_weights_bf16_gb": v["params"] * 2 / gb,
        "lora_params": lora,
        "lora_weights_grads_adam_fp32_gb": lora * 16 / gb,
        # checkpointed: what is kept across layers, plus one layer's full activations while it is recomputed
        "activations_ckpt_bf16_gb": ((c_ckpt / 2) * tokens * L * d + (c_full / 2) * tokens * d) / gb
        if c_ckpt and c_full else None,
        "activations_no_ckpt_bf16_gb": (c_full / 2) * tokens * L * d / gb if c_full else None,
        "runtime_overhead_gb": v["runtime_gb"],
        "separate_critic_copy_bf16_gb": v["params"] * 2 / gb,
        "full_finetune_fp32_adamw_static_gb": v["params"] * 16 / gb,
        "coeff_full_bytes_per_token_layer_hidden_fp32": c_full,
        "coeff_ckpt_bytes_per_token_layer_hidden_fp32": c_ckpt,
        "tokens_per_micro_batch": tokens,
    }
    if c_ckpt:
        parts["best_total_gb"] = (parts["base_weights_bf16_gb"] + parts["lora_weights_grads_adam_fp32_gb"]
                                  + parts["activations_ckpt_bf16_gb"] + v["runtime_gb"])
        parts["fits_24gb"] = parts["best_total_gb"] < 24
        parts["best_no_ckpt_total_gb"] = (parts["best_total_gb"] - parts["activations_ckpt_bf16_gb"]
                                          + parts["activations_no_ckpt_bf16_gb"])
        parts["best_separate_critic_total_gb"] = parts["best_total_gb"] + parts["separate_critic_copy_bf16_gb"]
    return {"assumptions": v, **parts}


def table(data: dict) -> str:
    """Markdown table of a result file: one row per (size, combo); change of the accounted peak vs ``full``."""
    rows = data["rows"]
    base = {r["size"]: r["accounted_mb"] for r in rows if r["combo"] == "full"}
    out = ["| size | switches | params | trainable | weights | grads | optimizer | activations | accounted peak "
           "| vs full | RSS peak of update | update s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rel = f"{100 * (r['accounted_mb'] / base[r['size']] - 1):+.0f}%" if r["size"] in base else ""
        opt = f"{r['optimizer_mb']:.0f}" + (" (host)" if r["optimizer_on_host"] else "")
        out.append(f"| {r['size']} | {r['combo']} | {r['params'] / 1e6:.1f}M | {r['trainable'] / 1e6:.2f}M | "
                   f"{r['weights_mb']:.0f} | {r['grads_mb']:.0f} | {opt} | {r['activations_mb']:.0f} | "
                   f"{r['accounted_mb']:.0f} | {rel} | +{r['rss_update_peak_mb']:.0f} | {r['update_s']:.2f} |")
    return "\n".join(out) + "\n\n(MB = 2^20 bytes)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="s,m,l")
    ap.add_argument("--combos", default=None, help="comma-separated subset of the switch combinations")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="docs/bench/memory.json")
    ap.add_argument("--project", metavar="JSON", help="only recompute the 7B projection of an existing result file")
    ap.add_argument("--merge", metavar="JSON,...", help="with --project: append the rows of these result files")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "COMBO"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one[0], a.one[1], a.batch)))
        return
    if a.project:
        data = json.loads(open(a.project).read())
        if a.merge:
            for f in a.merge.split(","):
                data["rows"] += json.loads(open(f).read())["rows"]
            order = {k: i for i, k in enumerate(SIZES)}
            data["rows"].sort(key=lambda r: order[r["size"]])
        data["projection_7b"] = project_7b(data["rows"])
        from vlaforge.fsutil import atomic_write_text

        atomic_write_text(a.project, json.dumps(data, indent=2))
        print(table(data))
        print(json.dumps(data["projection_7b"], indent=2))
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
                  f"accounted {r['accounted_mb']:7.1f} MB (act {r['activations_mb']:6.1f}) RSS +{r['rss_update_peak_mb']:7.1f} MB  "
                  f"update {r['update_s']:6.2f} s", flush=True)
    import torch
    import transformers

    meta = {"command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": f"{os.cpu_count()} CPU cores, no GPU",
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "memory": "RSS sampled every 1 ms (/proc/self/statm), fresh process per row"}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    from vlaforge.fsutil import atomic_write_text

    proj = project_7b(rows)
    atomic_write_text(a.out, json.dumps({"meta": meta, "rows": rows, "projection_7b": proj}, indent=2))
    print(table({"rows": rows}))
    print(json.dumps(proj, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
