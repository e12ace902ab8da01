"""One GPU check of issue 22, sized for a lent H100 (<= 10 minutes): the real commands' code paths on CUDA.

Every case runs the library's own entry points (``train()``, ``run_sft``, the ``vlaforge`` CLI) with ``device=cuda``,
each in its own process under its own time limit (one failing or hanging does not stop the others), and writes
one row per run to ``--out`` (default docs/bench/gpu_train.json):
``{"case", "policy", "suite", "device", "envs", "env_steps_per_s", "update_s", "peak_gib", "ok", "error"}``.

  a  tiny VLA, PPO, Meta-World reach-v3 (CPU simulation, GPU policy), 5 iterations, and the same run with
     ``--device cpu`` on that machine (two rows)
  b  SmolVLA at its real size (random weights, LeRobot layout), GRPO on ManiSkill3 PickCube, 2 iterations: the
     batched GPU simulator (``sim_backend gpu``, 256 scenes in one process, observations on the GPU) is tried
     first (its error is a row), then the per-scene CPU simulator in 8 workers; the dry run uses PointReach's
     batched torch simulator
  c  OpenVLA-OFT at its real size (random weights), LoRA + bf16 + gradient checkpointing, PPO on LIBERO-spatial,
     2 iterations
  d  SFT of SmolVLA (real size), 50 steps, bf16
  e  a run killed (SIGKILL) mid-run and resumed on the GPU with ``--deterministic``; ok when the resumed run's
     metrics equal the uninterrupted run's
  f  pi0 at its real size (random weights built on the device, 3.24B parameters), LoRA r=16 on the expert and the
     projections, frozen weights in bf16, bf16 autocast, gradient checkpointing: GRPO on PointReach at 224 px,
     2 iterations; peak_gib is the peak after the build (the update's)

``--dry-run`` runs the same cases at toy sizes on the CPU (PointReach instead of the simulators it would need
to install); ``make test`` runs it (tests/test_gpu_train.py), so the script cannot rot. env_steps_per_s and
update_s are the means of ``time/env_steps_per_s`` and ``time/update_s`` over the iterations after the first
(all of them when there is one); peak_gib is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak
RSS on the CPU.

    bash benchmarks/gpu_train.sh              # on the GPU machine
    bash benchmarks/gpu_train.sh --dry-run    # here
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEYS = ("case", "policy", "suite", "device", "envs", "env_steps_per_s", "update_s", "peak_gib", "ok", "error")
LIMITS = {"a": 100, "b": 130, "c": 100, "d": 60, "e": 60, "f": 150}  # seconds per case on the GPU machine


def row(case, policy, suite, device, envs, env_steps_per_s=None, update_s=None, peak_gib=None, ok=False,
        error=None) -> dict:
    return dict(zip(KEYS, (case, policy, suite, device, envs, env_steps_per_s, update_s, peak_gib, ok, error)))


def peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # kB -> GiB


def loop_speeds(out: Path) -> tuple[float, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "time/update_s" in r]
    use = rows[1:] if len(rows) > 1 else rows
    mean = lambda k: round(sum(r[k] for r in use) / max(len(use), 1), 4)  # noqa: E731
    return mean("time/env_steps_per_s"), mean("time/update_s")


def base_cfg(dry: bool, **kw):
    from vlaforge.train.loop import TrainConfig

    d = dict(eval_every=0, progress=False, tensorboard=False, threads=1 if dry else 4)
    d.update(kw)
    return TrainConfig(**d)


# -- the cases (each runs in its own process) --------------------------------------------------------------

def case_a(dry: bool, device: str, tmp: Path) -> list[dict]:
    from vlaforge.train.loop import train

    suite, tasks = ("pointreach", "train") if dry else ("metaworld", "reach-v3")
    rows = []
    for dev in (device, "cpu"):
        cfg = base_cfg(dry, algo="ppo", suite=suite, tasks=tasks, iterations=2 if dry else 5, groups=2 if dry else 8,
                       num_envs=4 if dry else 16, workers=0 if dry else 8, max_steps=8 if dry else 150,
                       image_size=32 if dry else 64, device=dev, out=str(tmp / f"a_{dev}"))
        cfg.ppo.group_size = 2 if dry else 4
        train(cfg)
        sps, upd = loop_speeds(Path(cfg.out))
        rows.append(row("a", "tiny", suite, dev, cfg.num_envs, sps, upd, peak_gib(dev), True))
    return rows


def smolvla_dir(path: Path, dry: bool, spec) -> Path:
    from vlaforge.policies.smolvla import tiny_lerobot_dir

    if path.exists():
        return path
    return tiny_lerobot_dir(path, state_dim=spec.state_dim, action_dim=spec.action_dim, views=spec.image_shape[0],
                            image_size=32 if dry else 256, chunk_size=4 if dry else 50, n_action_steps=4 if dry else 8,
                            num_steps=3 if dry else 10, real_size=not dry)


def case_b(dry: bool, device: str, tmp: Path) -> list[dict]:
    from vlaforge.envs import suite_spec
    from vlaforge.policies.hf.model import HFConfig
    from vlaforge.train.loop import train

    suite, tasks = ("pointreach", "train") if dry else ("maniskill", "pick-cube")
    spec = suite_spec(suite, tasks, image_size=32 if dry else 128)
    path = smolvla_dir(tmp / "smolvla", dry, spec)
    hf = HFConfig(path=str(path), lora_rank=0 if dry else 16, autocast=not dry, gradient_checkpointing=not dry,
                  micro_batch=0 if dry else 64)
    rows = []
    # the batched simulator first (ManiSkill's GPU sim; PointReach's torch one in the dry run), then one scene per env
    tries = ([({"sim_backend": "gpu"}, 256, 0), ({"sim_backend": "cpu"}, 16, 8)] if not dry
             else [({"sim_backend": "torch"}, 4, 0)])
    for env_kw, envs, workers in tries:
        cfg = base_cfg(dry, algo="grpo", policy="smolvla", hf=hf, suite=suite, tasks=tasks, iterations=2,
                       groups=max(envs // 8, 1) if not dry else 2, num_envs=envs, workers=workers, env_kwargs=env_kw,
                       max_steps=8 if dry else 50, image_size=32 if dry else 128, device=device,
                       precision="fp32" if dry else "bf16", out=str(tmp / f"b_{len(rows)}"))
        cfg.grpo.group_size = 2 if dry else 8
        label = f"{suite} ({'batched' if env_kw['sim_backend'] in ('gpu', 'torch') else 'per-scene'} sim)"
        try:
            train(cfg)
        except Exception as e:  # the GPU simulator may be missing: say so, then run the CPU simulator
            rows.append(row("b", "smolvla", label, device, envs, error=f"{type(e).__name__}: {str(e).splitlines()[0]}"))
            continue
        sps, upd = loop_speeds(Path(cfg.out))
        rows.append(row("b", "smolvla", label, device, envs, sps, upd, peak_gib(device), True))
        break
    return rows


def oft_policy(dry: bool, device: str, spec, tmp: Path):
    """OpenVLA-OFT with random weights: tiny, or the released 7B architecture built on the device in bf16."""
    import torch
    from safetensors.torch import save_file

    from vlaforge.policies.openvla import OpenVLAConfig, OpenVLAPolicy
    from vlaforge.policies.openvla.oft import L1RegressionActionHead, ProprioProjector
    from vlaforge.policies.openvla.prismatic import PrismaticVLM, read_prismatic_config
    from vlaforge.policies.openvla.tiny import make_tokenizer, tiny_config

    key = "pointreach" if dry else "libero_spatial_no_noops"
    raw = tiny_config(action_dim=spec.action_dim, state_dim=spec.state_dim, key=key, real_size=not dry, image_size=28)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(raw))
    pcfg = read_prismatic_config(tmp)
    make_tokenizer(pcfg.vocab_size).save_pretrained(tmp)
    D = pcfg.text_config["hidden_size"]  # the OFT components in their released files (DDP names)
    for name, mod in (("action_head", L1RegressionActionHead(D, spec.action_dim)),
                      ("proprio_projector", ProprioProjector(D, spec.state_dim))):
        save_file({f"module.{k}": v.detach().clone() for k, v in mod.state_dict().items()},
                  str(tmp / f"{name}--1_checkpoint.safetensors"))
    dtype = torch.float32 if dry else torch.bfloat16
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vlm = PrismaticVLM(pcfg).to(dtype)
    finally:
        torch.set_default_dtype(torch.float32)
    cfg = OpenVLAConfig(path=str(tmp), oft=True, chunk_size=4 if dry else 8, action_dim=spec.action_dim,
                        state_dim=spec.state_dim, views=spec.image_shape[0], image_size=pcfg.image_sizes[0],
                        lora_rank=4 if dry else 32, gradient_checkpointing=True, autocast=not dry,
                        weights_dtype="float32" if dry else "bfloat16", micro_batch=8, head_hidden=64 if dry else 256,
                        max_text_tokens=96)
    return OpenVLAPolicy(cfg, loaded=(vlm, pcfg))


def case_c(dry: bool, device: str, tmp: Path) -> list[dict]:
    from vlaforge.envs import suite_spec
    from vlaforge.train.loop import train

    suite, tasks = ("pointreach", "train") if dry else ("libero", "libero_spatial")
    spec = suite_spec(suite, tasks, image_size=32 if dry else 224)
    policy = oft_policy(dry, device, spec, tmp / "oft")
    cfg = base_cfg(dry, algo="ppo", policy="openvla-oft", suite=suite, tasks=tasks, iterations=2, groups=2,
                   num_envs=4 if dry else 8, workers=0 if dry else 8, max_steps=8 if dry else 80,
                   image_size=policy.cfg.image_size, chunk_size=policy.chunk_size, device=device,
                   precision="fp32" if dry else "bf16", out=str(tmp / "c"))
    cfg.ppo.group_size = 2
    train(cfg, policy=policy)
    sps, upd = loop_speeds(Path(cfg.out))
    return [row("c", "openvla-oft", suite, device, cfg.num_envs, sps, upd, peak_gib(device), True)]


def case_d(dry: bool, device: str, tmp: Path) -> list[dict]:
    from vlaforge.algos.sft import SFTConfig
    from vlaforge.envs import suite_spec
    from vlaforge.pipeline import CollectArgs, SFTArgs, run_collect, run_sft

    suite, tasks = ("pointreach", "train") if dry else ("metaworld", "reach-v3")
    size = 32 if dry else 64
    spec = suite_spec(suite, tasks, image_size=size)
    run_collect(CollectArgs(suite=suite, tasks=tasks, episodes=2 if dry else 10, out=str(tmp / "demos"),
                            num_envs=2 if dry else 10, image_size=size), quiet=True)
    init = smolvla_dir(tmp / "smolvla_d", dry, spec)
    steps = 5 if dry else 50
    t0 = time.perf_counter()
    run_sft(SFTArgs(demos=str(tmp / "demos"), out=str(tmp / "d"), init=str(init), device=device,
                    precision="fp32" if dry else "bf16", threads=1 if dry else 4,
                    sft=SFTConfig(steps=steps, batch_size=4 if dry else 32)), quiet=True)
    per_step = round((time.perf_counter() - t0) / steps, 4)  # includes loading: an upper bound of one step
    return [row("d", "smolvla", suite, device, 0, None, per_step, peak_gib(device), True)]


def case_e(dry: bool, device: str, tmp: Path) -> list[dict]:
    suite, tasks = ("pointreach", "train") if dry else ("metaworld", "reach-v3")
    args = ["--algo", "ppo", "--suite", suite, "--tasks", tasks, "--iterations", "4", "--groups", "2",
            "--num-envs", "4", "--max-steps", "8" if dry else "100", "--image-size", "32" if dry else "64",
            "--eval-every", "0", "--no-progress", "--no-tensorboard", "--threads", "1", "--device", device,
            "--deterministic", "--ppo.group-size", "2"]
    cli = [sys.executable, "-m", "vlaforge.cli", "train"]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    subprocess.run(cli + args + ["--out", str(tmp / "e_full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cli + args + ["--out", str(tmp / "e_killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp / "e_killed" / "checkpoint" / "state.json"
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        try:
            if json.loads(state.read_text())["iteration"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cli[:-1] + ["train", "--resume", str(tmp / "e_killed" / "checkpoint"), "--device", device,
                               "--deterministic", "--no-progress"], check=True, env=env, capture_output=True)

    def final(name):
        rows = [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    same = final("e_full") == final("e_killed")
    sps, upd = loop_speeds(tmp / "e_killed")
    return [row("e", "tiny", suite, device, 4, sps, upd, None, same,
                None if same else "the resumed run's metrics differ from the uninterrupted run's")]


def pi0_policy(dry: bool, device: str, spec):
    """π0 with random weights built on the device: tiny, or the released architecture (PaliGemma 2B + Gemma 300M
    expert + SigLIP So400m at 224 px, 3.24B parameters), LoRA on the expert and projections, frozen weights in bf16."""
    import torch

    from vlaforge.policies.pi0 import Pi0, Pi0Config, configs

    lr, tok = configs(state_dim=spec.state_dim, action_dim=spec.action_dim, views=spec.image_shape[0], image_size=32,
                      chunk_size=4 if dry else 50, n_action_steps=4 if dry else 8, num_steps=3 if dry else 10,
                      real_size=not dry)
    cfg = Pi0Config(lerobot=lr, lora_rank=4 if dry else 16, autocast=not dry,
                    weights_dtype="float32" if dry else "bfloat16", gradient_checkpointing=True, micro_batch=8,
                    head_hidden=64 if dry else 256)
    with torch.device(device):
        return Pi0(cfg, tok)


def case_f(dry: bool, device: str, tmp: Path) -> list[dict]:
    import torch

    from vlaforge.envs import suite_spec
    from vlaforge.train.loop import train

    suite, tasks = "pointreach", "train"  # the update is what is measured; PointReach needs no simulator install
    size = 32 if dry else 224
    spec = suite_spec(suite, tasks, image_size=size)
    policy = pi0_policy(dry, device, spec)
    n_params = sum(p.numel() for p in policy.parameters())
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()  # the update's peak, not the fp32 build's
    cfg = base_cfg(dry, algo="grpo", policy="pi0", suite=suite, tasks=tasks, iterations=2, groups=2 if dry else 4,
                   num_envs=4 if dry else 8, max_steps=8 if dry else 16, image_size=size, chunk_size=policy.chunk_size,
                   device=device, precision="fp32" if dry else "bf16", out=str(tmp / "f"))
    cfg.grpo.group_size = 2
    train(cfg, policy=policy)
    sps, upd = loop_speeds(Path(cfg.out))
    label = f"{suite} ({n_params / 1e9:.2f}B params)"
    return [row("f", "pi0", label, device, cfg.num_envs, sps, upd, peak_gib(device), True)]


CASES = {"a": case_a, "b": case_b, "c": case_c, "d": case_d, "e": case_e, "f": case_f}
POLICY = {"a": "tiny", "b": "smolvla", "c": "openvla-oft", "d": "smolvla", "e": "tiny", "f": "pi0"}


def run_case(case: str, dry: bool, device: str, tmp: Path, out: Path) -> None:
    """Child process: one case, its rows as JSON in ``out``."""
    rows = CASES[case](dry, device, tmp)
    out.write_text(json.dumps(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (checks the script)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases (a..f)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    ap.add_argument("--out", default="docs/bench/gpu_train.json")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every case's time limit")
    ap.add_argument("--run-case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    device = a.device or ("cpu" if a.dry_run else "cuda")
    if a.run_case:
        run_case(a.run_case, a.dry_run, device, Path(a.tmp), Path(a.rows))
        return 0
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        print(f"gpu_train.py: unknown case(s) {bad}; choose from {','.join(CASES)}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        for c in cases:
            limit = (600 if a.dry_run else LIMITS[c]) * a.scale
            rows_file = Path(tmp) / f"rows_{c}.json"
            cmd = [sys.executable, __file__, "--run-case", c, "--tmp", str(Path(tmp) / c), "--rows", str(rows_file),
                   "--device", device] + (["--dry-run"] if a.dry_run else [])
            (Path(tmp) / c).mkdir()
            t0 = time.perf_counter()
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
                err = None if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            except subprocess.TimeoutExpired:
                err = f"timed out after {limit:.0f} s"
            got = json.loads(rows_file.read_text()) if rows_file.exists() else []
            if err or not got:
                got = got + [row(c, POLICY[c], "-", device, 0, error=err or "no row written")]
            rows.extend(got)
            status = "ok" if all(r["ok"] for r in got) else "FAILED"
            print(f"case {c}: {status} in {time.perf_counter() - t0:.0f} s: "
                  + "; ".join(f"{r['device']} {r['suite']} env_steps/s={r['env_steps_per_s']} update_s={r['update_s']} "
                              f"peak_gib={r['peak_gib']}" + (f" error={r['error']}" if r["error"] else "") for r in got))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
