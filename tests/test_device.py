"""``--device``: every tensor of a rollout, a batch and an update on the policy's device, checkpoints that load on
either device, and the CPU path unchanged. CI has no GPU, so the device is a stand-in (tests/device_audit.py):
an op mixing host and "device" tensors is recorded exactly where CUDA would raise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from device_audit import FAKE, DeviceAudit, tagged

from vlaforge.algos import get_algo
from vlaforge.algos.common import LOCAL
from vlaforge.device import resolve_device, to_host
from vlaforge.envs import make_vec_env
from vlaforge.errors import UsageError
from vlaforge.policies import build_policy, save_policy
from vlaforge.rollout.collect import collect


def _walk(tmp_path, algo: str, head: str = "gaussian", backbone: str = "vision", critic: str = "image",
          multitask: bool = False, **cfg_kw):
    """collect → Rollout.to(device) → prepare → update, all under the audit; returns (audit, policy, batch,
    optimizer, parameters before). ``multitask`` (distill): tasks 0, 1, 2 in one batch, per-task teachers that record
    their sim_state fields for tasks 0 and 1, none for task 2."""
    torch.manual_seed(0)
    venv = make_vec_env("pointreach", 4, image_size=32, max_steps=8)
    spec = venv.spec
    pol = build_policy("tiny", state_dim=spec.state_dim, action_dim=spec.action_dim, views=1, image_size=32,
                       head=head, chunk_size=4, backbone=backbone)
    if critic == "privileged":
        pol.use_privileged_critic(len(spec.sim_state_names))
    a = get_algo(algo)
    cfg = a.config(**cfg_kw)
    if algo == "distill":
        torch.manual_seed(1)
        save_policy(build_policy(backbone="state", state_dim=4, action_dim=spec.action_dim), tmp_path / "teacher")
        cfg.teacher, cfg.teacher_state, cfg.steps, cfg.batch_size = str(tmp_path / "teacher"), "0,1,2,3", 3, 8
        if multitask:
            save_policy(build_policy(backbone="state", state_dim=2, action_dim=spec.action_dim), tmp_path / "t2",
                        extra={"state_fields": ["goal_x", "goal_y"]})
            cfg.teacher = f"{spec.tasks[0].name}={tmp_path / 'teacher'},{spec.tasks[1].name}={tmp_path / 't2'}"
            cfg.teacher_state = ""
            save_policy(build_policy(backbone="state", state_dim=4, action_dim=spec.action_dim), tmp_path / "teacher",
                        extra={"state_fields": ["ee_x", "ee_y", "goal_x", "goal_y"]})
    task_ids = np.array([0, 1, 2, 0]) if multitask else np.zeros(4, np.int64)
    pol.to(FAKE)
    with DeviceAudit(pol) as audit:
        st = a.new_state(pol, cfg, spec)
        before = {n: p.detach().clone() for n, p in pol.named_parameters()}
        r, _ = collect(pol, venv, task_ids, np.full(4, 7), temperature=cfg.temperature)  # one group
        assert not tagged(r.log_prob) and not tagged(r.obs_images)  # a Rollout comes back to the host
        r.success[:] = torch.arange(4) % 2 == 0
        r.reward[:] = 0
        r.reward[r.alive.sum(0) - 1, torch.arange(4)] = r.success.float()
        batch, _ = a.prepare(r.to(FAKE), cfg)
        opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-2)
        a.update(pol, opt, batch, cfg, 0, torch.Generator().manual_seed(0), LOCAL, st)
    venv.close()
    return audit, pol, batch, opt, before


ALGO_CASES = [("ppo", "gaussian", "vision", "image", {}), ("ppo", "gaussian", "vision", "privileged", {}),
              ("ppo", "tokens", "vision", "image", {"level": "action"}), ("grpo", "flow", "vision", "image", {}),
              ("grpo", "gaussian", "vision", "image", {"level": "chunk"}), ("rloo", "tokens", "vision", "image", {}),
              ("tpo", "gaussian", "vision", "image", {}), ("sac", "gaussian", "state", "image", {"batch_size": 8}),
              ("dsrl", "flow", "vision", "image", {"batch_size": 8}), ("distill", "gaussian", "vision", "image", {})]


@pytest.mark.parametrize("algo,head,backbone,critic,kw", ALGO_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3]}" + (f"-{next(iter(c[4].values()))}" if c[4] else "")
                              for c in ALGO_CASES])
def test_every_algorithm_keeps_its_tensors_on_the_policy_device(tmp_path, algo, head, backbone, critic, kw):
    audit, pol, batch, opt, before = _walk(tmp_path, algo, head, backbone, critic, **kw)
    assert audit.violations == [], "\n".join(audit.violations)
    moved = [n for n, p in pol.named_parameters() if not torch.equal(before[n], p.detach())]
    assert moved, "the update moved no parameter"
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    assert all(tagged(v) for v in state)  # optimizer moments live beside their parameters
    fields = batch.fields if algo in ("sac", "dsrl") else vars(batch)
    for k, v in fields.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            assert tagged(v), f"batch field {k} is on the host"


def test_multitask_distillation_keeps_its_tensors_on_the_policy_device(tmp_path):
    """Per-task teachers (one task without): the labels, the labelled mask and the kept frames on the device."""
    audit, pol, batch, _, before = _walk(tmp_path, "distill", multitask=True, steps=3, batch_size=8)
    assert audit.violations == [], "\n".join(audit.violations)
    assert sorted(set(batch.task_ids.tolist())) == [0, 1, 2]
    assert any(not torch.equal(before[n], p.detach()) for n, p in pol.named_parameters())


def test_the_audit_catches_a_tensor_made_on_the_host():
    """The stand-in must fail where CUDA fails: a host factory beside device tensors, a CPU generator for a
    device tensor; and stay quiet for what CUDA allows (host scalars, host index tensors, explicit copies)."""
    lin = torch.nn.Linear(3, 2).to(FAKE)
    with DeviceAudit(lin) as audit:
        x = torch.ones(4, 3, device=lin.weight.device)
        y = lin(x) * torch.tensor(2.0)  # a 0-dim host scalar: allowed
        y = y[torch.tensor([0, 2])]  # a host index: allowed
        y.sum().backward()
        _ = y.detach().cpu().numpy()
        assert audit.violations == []
        _ = lin(x) + torch.zeros(2)  # made on the host
        _ = torch.randn(3, generator=torch.Generator(), device=x.device)
    assert len(audit.violations) == 2, audit.violations
    assert "add mixes host and device" in audit.violations[0] and "Generator" in audit.violations[1]


def test_sft_step_and_evaluation_stay_on_the_device(tmp_path):
    from vlaforge.algos.sft import DemoSampler, sft_step
    from vlaforge.data.demos import load_demos
    from vlaforge.device import to_device
    from vlaforge.pipeline import CollectArgs, run_collect
    from vlaforge.rollout.evaluate import evaluate_policy

    run_collect(CollectArgs(suite="pointreach", tasks="train", episodes=2, out=str(tmp_path / "d"), num_envs=2,
                            image_size=32), quiet=True)
    demos = load_demos(tmp_path / "d")
    pol = build_policy("tiny", state_dim=demos.state.shape[1], action_dim=demos.actions.shape[1], image_size=32,
                       chunk_size=4).to(FAKE)
    names = sorted(set(demos.task_names))
    sampler = DemoSampler(demos, 4, {n: i for i, n in enumerate(names)})
    opt = torch.optim.AdamW(pol.parameters(), lr=1e-3)
    venv = make_vec_env("pointreach", 2, image_size=32, max_steps=8)
    with DeviceAudit(pol) as audit:
        obs, acts, mask = to_device(sampler.batch(8, shift=2), pol.act_lo.device)
        sft_step(pol, opt, obs, acts, mask, 1.0)
        evaluate_policy(pol, venv, [venv.spec.tasks[0].name], 2)
    venv.close()
    assert audit.violations == [], "\n".join(audit.violations)


def test_device_flag_is_checked_before_any_work():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    for bad in ("gpu", "cuda:x", "tpu:0", ""):
        with pytest.raises(UsageError, match="not a device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_to_host_and_rollout_to_keep_cpu_tensors_as_they_are():
    t = torch.arange(3)
    assert to_host({"a": [t]})["a"][0].device.type == "cpu"
    from helpers import one_group_rollout

    r = one_group_rollout(build_policy(state_dim=2, action_dim=2, image_size=32), n=2)
    r2 = r.to("cpu")
    assert r2.log_prob is r.log_prob and r2.taken.keys() == r.taken.keys()  # no copies on the CPU


def _save_as_if_from_cuda(obj, path):
    """``torch.save`` with every storage tagged 'cuda:0', as a GPU run writes it (no GPU needed)."""
    import torch.serialization as ser

    orig = ser.location_tag
    ser.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        ser.location_tag = orig


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path):
    """optimizer.pt with CUDA-tagged tensors and GPU RNG states in rng.safetensors (what a GPU run writes) load and
    resume here: tensors mapped to the CPU, the GPU RNG states ignored on a machine without that GPU."""
    from safetensors.torch import load_file, save_file

    from vlaforge.train.loop import TrainConfig, train

    cfg = TrainConfig(algo="ppo", suite="pointreach", tasks="train", iterations=1, groups=2, num_envs=4, max_steps=8,
                      image_size=32, eval_every=0, progress=False, tensorboard=False, threads=1, device="cpu",
                      out=str(tmp_path / "run"))
    cfg.ppo.group_size = 2
    train(cfg)
    ck = tmp_path / "run" / "checkpoint"
    opt = torch.load(ck / "optimizer.pt", weights_only=True)
    _save_as_if_from_cuda(opt, ck / "optimizer.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # really tagged for a GPU
        torch.load(ck / "optimizer.pt", weights_only=True)
    rng = load_file(str(ck / "rng.safetensors"))
    save_file({**rng, "torch_cuda_0": torch.zeros(16, dtype=torch.uint8)}, str(ck / "rng.safetensors"))
    state = json.loads((ck / "state.json").read_text())
    state["config"]["iterations"] = 2
    state["config"]["device"] = "cuda"  # where it ran; the resuming command line decides where it runs now
    (ck / "state.json").write_text(json.dumps(state))
    train(TrainConfig(resume=str(ck), out=str(tmp_path / "run"), device="cpu", progress=False, tensorboard=False))
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["device"] == "cpu" and saved["iterations"] == 2
    assert json.loads((ck / "state.json").read_text())["iteration"] == 2


def test_explicit_cpu_is_the_default_path_exactly(tmp_path):
    """``--device cpu`` and ``--precision fp32`` are the code path of earlier versions: the same metrics as the
    default (auto → cpu here) for a fixed seed, and the run's config records the device."""
    from vlaforge.train.loop import TrainConfig, train

    def run(name, **kw):
        cfg = TrainConfig(algo="rloo", suite="pointreach", tasks="train", iterations=2, groups=2, num_envs=4,
                          max_steps=8, image_size=32, eval_every=0, progress=False, tensorboard=False, threads=1,
                          out=str(tmp_path / name), **kw)
        cfg.rloo.group_size = 2
        train(cfg)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    a, b = run("auto"), run("cpu", device="cpu", precision="fp32")
    assert a == b
    assert json.loads((tmp_path / "cpu" / "train_config.json").read_text())["device"] == "cpu"


def test_bf16_autocast_runs_an_update(tmp_path):
    """``--precision bf16`` (autocast; the CPU runs it too, slowly): the run completes with finite metrics and fp32
    weights."""
    from vlaforge.train.loop import TrainConfig, train

    cfg = TrainConfig(algo="ppo", suite="pointreach", tasks="train", iterations=1, groups=2, num_envs=4, max_steps=8,
                      image_size=32, eval_every=0, progress=False, tensorboard=False, threads=1, device="cpu",
                      precision="bf16", out=str(tmp_path / "bf16"))
    cfg.ppo.group_size = 2
    final = train(cfg)
    assert all(np.isfinite(v) for v in final.values() if isinstance(v, float))
    from vlaforge.policies import load_policy

    assert all(p.dtype == torch.float32 for p in load_policy(tmp_path / "bf16" / "final").parameters())


def test_a_whole_training_run_stays_on_the_device(tmp_path, monkeypatch):
    """``train()`` end to end (collect, advantages, update, evaluation, checkpoint) with the policy on the stand-in
    device: no op mixes host and device tensors, and the checkpoint is written from host copies."""
    import vlaforge.train.loop as loop

    monkeypatch.setattr(loop, "resolve_device", lambda name: FAKE)
    cfg = loop.TrainConfig(algo="ppo", suite="pointreach", tasks="train", iterations=2, groups=2, num_envs=4,
                           max_steps=8, image_size=32, eval_every=1, eval_episodes=2, progress=False,
                           tensorboard=False, threads=1, critic="privileged", out=str(tmp_path / "run"))
    cfg.ppo.group_size = 2
    with DeviceAudit() as audit:
        loop.train(cfg)
    assert audit.violations == [], "\n".join(audit.violations)
    opt = torch.load(tmp_path / "run" / "checkpoint" / "optimizer.pt", weights_only=True)
    assert opt["state"]  # written, and loadable without a device


def test_sft_and_eval_commands_take_the_device_flags(tmp_path):
    """``vlaforge sft|eval --device cpu --precision bf16`` run; ``--device cuda`` on a machine without one, and a
    malformed device, are refused in one line before anything is written."""
    from vlaforge.cli import main

    demos, sft = tmp_path / "demos", tmp_path / "sft"
    assert main(["collect", "--suite", "pointreach", "--tasks", "train", "--episodes", "2", "--num-envs", "2",
                 "--out", str(demos)]) == 0
    base = ["sft", "--demos", str(demos), "--sft.steps", "3", "--sft.batch-size", "4", "--threads", "1"]
    assert main(base + ["--out", str(sft), "--device", "cpu", "--precision", "bf16"]) == 0
    assert main(["eval", "--checkpoint", str(sft), "--suite", "pointreach", "--tasks", "train", "--episodes", "2",
                 "--num-envs", "2", "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "ev.json")]) == 0
    for bad in (["--device", "gpu0"], [] if torch.cuda.is_available() else ["--device", "cuda"]):
        if bad:
            assert main(base + ["--out", str(tmp_path / "never")] + bad) == 2
            assert not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def released_families(tmp_path_factory):
    """Tiny random checkpoints of the released families, in their published layouts (built once)."""
    from vlaforge.policies.hf.tiny import save_tiny_vlm
    from vlaforge.policies.openvla import save_tiny_openvla
    from vlaforge.policies.pi0 import tiny_lerobot_dir as tiny_pi0_dir
    from vlaforge.policies.smolvla import tiny_lerobot_dir

    d = tmp_path_factory.mktemp("families")
    return {"smolvla": tiny_lerobot_dir(d / "smolvla", image_size=32), "pi0": tiny_pi0_dir(d / "pi0", image_size=32),
            "openvla-oft": save_tiny_openvla(d / "oft", oft=True),
            "hf": save_tiny_vlm(d / "qwen", "qwen2_vl")}


def _family_policy(name, path):
    from vlaforge.policies import load_policy

    if name in ("smolvla", "pi0"):
        return load_policy(path), 32
    if name == "openvla-oft":
        return build_policy("openvla-oft", path=str(path), action_dim=2, state_dim=2, image_size=28, max_text_tokens=76,
                            head_hidden=16, chunk_size=2), 28
    return build_policy("hf", path=str(path), n_bins=32, max_text_tokens=48, chunk_size=2, lora_rank=4, head_hidden=32,
                        image_size=32), 32


@pytest.mark.parametrize("family,algo", [("smolvla", "ppo"), ("smolvla", "grpo"), ("pi0", "ppo"), ("pi0", "grpo"),
                                         ("openvla-oft", "ppo"),
                                         ("hf", "ppo"), ("hf", "tpo")])
def test_released_families_keep_their_tensors_on_the_policy_device(released_families, family, algo):
    """SmolVLA, π0, OpenVLA-OFT and a Hugging Face VLM (LoRA) through collect → prepare → update on the stand-in device."""
    torch.manual_seed(0)
    pol, size = _family_policy(family, released_families[family])
    venv = make_vec_env("pointreach", 4, image_size=size, max_steps=4)
    a = get_algo(algo)
    cfg = a.config()
    pol.to(FAKE)
    with DeviceAudit(pol) as audit:
        before = {n: p.detach().clone() for n, p in pol.named_parameters() if p.requires_grad}
        r, _ = collect(pol, venv, np.zeros(4, np.int64), np.full(4, 7))
        r.success[:] = torch.arange(4) % 2 == 0
        r.reward[:] = 0
        r.reward[r.alive.sum(0) - 1, torch.arange(4)] = r.success.float()
        batch, _ = a.prepare(r.to(FAKE), cfg)
        opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-3)
        a.update(pol, opt, batch, cfg, 0, torch.Generator().manual_seed(0), LOCAL, a.new_state(pol, cfg))
    venv.close()
    assert audit.violations == [], "\n".join(audit.violations)
    assert any(not torch.equal(before[n], p.detach()) for n, p in pol.named_parameters() if n in before)


@pytest.mark.parametrize("path", ["reference", "layout", "cache", "fused"])
def test_tiny_act_paths_stay_on_the_device(path, monkeypatch):
    """Every ActPath of the tiny VLA's act (policies/tiny/fast.py), on a cache miss and a hit, and value() without
    grad: no host tensor beside device ones; a host tensor slipped into the fused path is caught."""
    from vlaforge.policies.tiny import fast
    from vlaforge.types import Observation

    paths = {"reference": fast.ActPath.reference(), "layout": fast.ActPath(True, True, False, False),
             "cache": fast.ActPath(fused=False), "fused": fast.ActPath()}
    torch.manual_seed(0)
    pol = build_policy("tiny", state_dim=3, action_dim=2, views=2, image_size=32, chunk_size=3).eval().to(FAKE)
    pol.act_path = paths[path]
    rng = np.random.default_rng(0)
    obs = Observation(images=rng.integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8),
                      state=rng.standard_normal((3, 3)).astype(np.float32), instructions=["reach the goal", "", "push"],
                      task_ids=np.arange(3))
    with DeviceAudit(pol) as audit:
        for _ in range(2):
            out = pol.act(obs)
        with torch.no_grad():
            pol.value(obs)
    assert audit.violations == [], "\n".join(audit.violations)
    assert tagged(out.actions) and tagged(out.taken["x"])
    if path == "fused":
        fusion = fast._fusion
        monkeypatch.setattr(fast, "_fusion", lambda m, t, mask: fusion(m, t + torch.zeros(t.shape[-1]), mask))
        with DeviceAudit(pol) as audit:
            pol.act(obs)
        assert len(audit.violations) == 1 and "fast.py" in audit.violations[0]
