"""SmolVLA without LeRobot (issue 16): a tiny random checkpoint in LeRobot's published layout, offline.

Layout round trip (LeRobot key names, config fields, statistics in processor files or legacy buffers),
the prefix-cache decomposition against LeRobot's joint-sequence forward, act/evaluate consistency of
the SDE chain, one update of PPO/GRPO/RLOO/TPO, LoRA + bf16 + checkpointing + micro-batches,
vlaforge checkpoints and LeRobot export, one-line errors for bad checkpoints, and the CLI.
"""

import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import one_group_rollout, update_once  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from vlaforge.envs import make_vec_env  # noqa: E402
from vlaforge.policies import CheckpointError, load_policy, read_config, save_policy  # noqa: E402
from vlaforge.policies.smolvla import SmolVLA, export_lerobot, load_lerobot, tiny_lerobot_dir  # noqa: E402
from vlaforge.policies.smolvla.model import _finish, _proj, attention, make_att_2d, rope  # noqa: E402
from vlaforge.types import Observation  # noqa: E402

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*torchvision.*")
pytestmark = pytest.mark.filterwarnings("ignore:.*(is_gradient_checkpointing|gradient_checkpointing_enable).*:FutureWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_lerobot_dir(tmp_path_factory.mktemp("smolvla") / "tiny", chunk_size=6, n_action_steps=4)


def _obs(n=3, seed=0, views=1) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 255, (n, views, 40, 40, 3), dtype=torch.uint8, generator=g),
                       torch.randn(n, 2, generator=g), (["reach the red target", "reach blue", "go"] * n)[:n],
                       torch.zeros(n, dtype=torch.long))


def test_lerobot_layout_loads_key_for_key(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["type"] == "smolvla" and cfg["input_features"]["observation.state"]["type"] == "STATE"
    w = load_file(str(ckpt / "model.safetensors"))
    # LeRobot's names and shapes (hidden 64, 4 heads of 16, 2 kv heads; expert 48 wide; layer 1 is cross-attention)
    assert w["model.vlm_with_expert.vlm.model.text_model.layers.3.self_attn.k_proj.weight"].shape == (32, 64)
    assert w["model.vlm_with_expert.lm_expert.layers.0.self_attn.k_proj.weight"].shape == (32, 48)
    assert w["model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"].shape == (32, 32)
    assert w["model.vlm_with_expert.lm_expert.layers.1.self_attn.q_proj.weight"].shape == (64, 48)
    assert w["model.state_proj.weight"].shape == (64, 8) and w["model.action_in_proj.weight"].shape == (48, 8)
    assert w["model.action_time_mlp_in.weight"].shape == (48, 96)
    assert "model.vlm_with_expert.vlm.model.vision_model.embeddings.patch_embedding.weight" in w
    assert "model.vlm_with_expert.vlm.model.connector.modality_projection.proj.weight" in w
    stats = load_file(str(next(ckpt.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))))
    p = load_policy(ckpt)  # dispatches on LeRobot's config.json
    assert isinstance(p, SmolVLA) and p.chunk_size == 4 and p.action_dim == 2 and p.cfg.views == 1
    own = p.state_dict()
    for k, v in w.items():
        if k != "model.vlm_with_expert.vlm.lm_head.weight":
            assert torch.equal(own[k], v), k
    torch.testing.assert_close(p.state_shift, stats["observation.state.mean"])
    torch.testing.assert_close(p.action_scale, stats["action.std"] + 1e-8)
    # the pre-processor-era layout: statistics as normalize_* buffers inside model.safetensors
    legacy = tiny_lerobot_dir(tmp_path / "legacy", chunk_size=6, n_action_steps=4, legacy_stats=True)
    assert "normalize_inputs.buffer_observation_state.mean" in load_file(str(legacy / "model.safetensors"))
    q = load_policy(legacy)
    torch.testing.assert_close(q.state_shift, p.state_shift)
    torch.testing.assert_close(q.action_shift, p.action_shift)
    assert read_config(ckpt)["policy"]["state_dim"] == 2  # what `vlaforge eval` validates against


def _joint_velocity(m, images, masks, ids, lmask, state, x, t):
    """LeRobot's training forward restated: prefix and suffix in ONE sequence, self-attention layers over the
    concatenated streams with the 2-D prefix-LM mask, cross-attention layers reading the prefix keys."""
    vw = m.vlm_with_expert
    pe, ppad, par = m.embed_prefix(images, masks, ids, lmask, state)
    se = m.embed_suffix(x, t)
    Lp, Ls = pe.shape[1], se.shape[1]
    pad = torch.cat([ppad, torch.ones(x.shape[0], Ls, dtype=torch.bool)], 1)
    mask = make_att_2d(pad, torch.cat([par, torch.ones(x.shape[0], Ls, dtype=torch.long)], 1))
    pos = pad.long().cumsum(1) - 1
    hp, hs, d = pe, se, vw.head_dim
    for i in range(vw.num_vlm_layers):
        lv, le = vw.text_model.layers[i], vw.expert_layer(i)
        xp, xs = lv.input_layernorm(hp), le.input_layernorm(hs)
        B = xp.shape[0]
        qp, kp, vp = (_proj(lv, n, xp).view(B, Lp, -1, d) for n in ("q_proj", "k_proj", "v_proj"))
        if not vw.is_cross(i):
            qs, ks, vs = (_proj(le, n, xs).view(B, Ls, -1, d) for n in ("q_proj", "k_proj", "v_proj"))
            q, k = rope(torch.cat([qp, qs], 1), pos), rope(torch.cat([kp, ks], 1), pos)
            att = attention(q, k, torch.cat([vp, vs], 1), mask)
            hp, hs = _finish(lv, hp, att[:, :Lp]), _finish(le, hs, att[:, Lp:])
        else:
            kp = rope(kp, pos[:, :Lp])
            att_p = attention(rope(qp, pos[:, :Lp]), kp, vp, mask[:, :Lp, :Lp])
            qs = rope(_proj(le, "q_proj", xs).view(B, Ls, -1, d), pos[:, Lp:] - pos[:, Lp:].min(1, keepdim=True).values)
            ks = _proj(le, "k_proj", kp.reshape(B, Lp, -1)).view(B, Lp, -1, d)
            vs = _proj(le, "v_proj", vp.reshape(B, Lp, -1)).view(B, Lp, -1, d)
            att_s = attention(qs, ks, vs, mask[:, Lp:, :Lp])
            hp, hs = _finish(lv, hp, att_p), _finish(le, hs, att_s)
    return m.action_out_proj(vw.lm_expert.norm(hs)[:, -m.arch.chunk_size:])


def test_prefix_cache_equals_lerobot_joint_forward(ckpt):
    p = load_lerobot(ckpt)
    m = p.model
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(2, 3, 32, 32, generator=g) * 2 - 1]
    masks = [torch.ones(2, dtype=torch.bool)]
    ids = torch.randint(4, 60, (2, 7), generator=g)
    lmask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)  # right padding
    state = torch.randn(2, 8, generator=g)
    x, t = torch.randn(2, 6, 8, generator=g), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        h, kv, pad = m.prefix(images, masks, ids, lmask, state)
        ours = m.velocity(kv, pad, x, t)
        ref = _joint_velocity(m, images, masks, ids, lmask, state, x, t)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_act_evaluate_consistency_and_noise_input(ckpt):
    torch.manual_seed(0)
    p = load_lerobot(ckpt)
    obs = _obs()
    out = p.act(obs)
    assert out.actions.shape == (3, 4, 2) and out.log_prob.shape == (3, 4, 2) and out.value.shape == (3,)
    assert out.taken["chain"].shape == (3, 4, 6, 8) and (out.actions.abs() <= 1).all()
    lp, ent, v = p.evaluate(obs, out.taken)
    torch.testing.assert_close(lp, out.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(v, out.value, atol=1e-5, rtol=0)
    sub = np.array([2, 0])  # another batch composition (language padded to a different length)
    lp2, _, _ = p.evaluate(obs.index(sub), {k: x[sub] for k, x in out.taken.items()})
    torch.testing.assert_close(lp2, out.log_prob[sub], atol=1e-4, rtol=0)
    # only the exposed block is stochastic: the padded dims and the tail follow the ODE
    chain = out.taken["chain"]
    d = p.act(obs, deterministic=True)
    assert torch.equal(d.actions, p.act(obs, deterministic=True).actions)
    assert torch.isfinite(d.log_prob).all()
    o2 = p.act(obs, temperature=2.0)  # sampling and scoring at one temperature
    torch.testing.assert_close(p.evaluate(obs, o2.taken, temperature=2.0)[0], o2.log_prob, atol=1e-5, rtol=0)
    w = torch.randn(3, 4, 2)  # DSRL-style steering: the initial noise of the exposed block
    a1 = p.act(obs, deterministic=True, noise=w).actions
    assert torch.equal(a1, p.act(obs, deterministic=True, noise=w).actions)
    assert not torch.equal(a1, d.actions)
    with pytest.raises(ValueError, match="initial noise"):
        p.act(obs, noise=torch.randn(3, 5, 2))
    assert chain[:, 0].abs().sum() > 0
    loss, m = p.sft_loss(obs, out.actions, torch.ones(3, 4, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and p.model.action_out_proj.weight.grad.abs().sum() > 0
    assert p.model.vlm_with_expert.vlm.model.text_model.layers[0].self_attn.q_proj.weight.grad is None  # frozen VLM


def test_every_algorithm_updates(ckpt):
    p = load_lerobot(ckpt)
    r = one_group_rollout(p)
    m, moved = update_once(p, "ppo", r, critic_warmup=0, minibatch_size=4, epochs=1)
    assert m["train/optimizer_steps"] > 0 and any("lm_expert" in n for n in moved) and any("value_net" in n for n in moved)
    for algo in ("grpo", "rloo"):
        m, moved = update_once(p, algo, r, group_size=4, epochs=1)
        assert m["train/optimizer_steps"] > 0 and any("action_out_proj" in n for n in moved)
    m, moved = update_once(p, "tpo", r, epochs=1)
    assert m["train/optimizer_steps"] == 1 and any("lm_expert" in n for n in moved)


def test_lora_bf16_checkpointing_micro_batches(ckpt, tmp_path):
    torch.manual_seed(0)
    p = load_lerobot(ckpt, lora_rank=4, weights_dtype="bfloat16", autocast=True, gradient_checkpointing=True,
                     micro_batch=2)
    trainable = [n for n, x in p.named_parameters() if x.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_net") for n in trainable)
    assert p.model.vlm_with_expert.lm_expert.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    obs = _obs()
    out = p.act(obs)
    torch.testing.assert_close(p.evaluate(obs, out.taken)[0], out.log_prob, atol=1e-4, rtol=0)
    with torch.no_grad(), p.reference():  # LoRA B starts at zero: policy == reference
        torch.testing.assert_close(p.evaluate(obs, out.taken)[0], out.log_prob, atol=1e-4, rtol=0)
    r = one_group_rollout(p)
    m, moved = update_once(p, "ppo", r, critic_warmup=0, minibatch_size=4, epochs=1)
    assert m["train/optimizer_steps"] > 0 and any("lora_B" in n for n in moved)
    m, moved = update_once(p, "tpo", r, reference="base", epochs=1)
    assert m["train/optimizer_steps"] == 1
    with torch.no_grad(), p.reference():
        ref = p.evaluate(obs, out.taken)[0]
    assert not torch.allclose(ref, p.evaluate(obs, out.taken)[0].detach())  # adapters moved, reference did not
    # vlaforge checkpoint round trip (LoRA layers, bf16 base) and export back to LeRobot's layout (LoRA merged)
    save_policy(p, tmp_path / "ck")
    q = load_policy(tmp_path / "ck")
    assert isinstance(q, SmolVLA) and q.cfg.lora_rank == 4 and (tmp_path / "ck" / "tokenizer").is_dir()
    for (n, a), (_, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert torch.equal(a, b), n
    p.cfg.autocast, p.cfg.weights_dtype = False, "float32"
    export_lerobot(p, tmp_path / "exported")
    e = load_policy(tmp_path / "exported")
    w = torch.randn(3, 4, 2)
    torch.testing.assert_close(e.act(obs, True, noise=w).actions, p.act(obs, True, noise=w).actions, atol=3e-2, rtol=0)


def _break(src, dst, fn):
    import shutil

    shutil.copytree(src, dst)
    fn(dst)
    return dst


def test_bad_checkpoints_one_line_errors(ckpt, tmp_path):
    def drop_key(d):
        w = load_file(str(d / "model.safetensors"))
        del w["model.action_out_proj.bias"]
        save_file(w, str(d / "model.safetensors"))

    def wrong_width(d):
        c = json.loads((d / "config.json").read_text())
        c["expert_width_multiplier"] = 0.5
        (d / "config.json").write_text(json.dumps(c))

    def no_stats(d):
        for f in d.glob("*normalizer_processor.safetensors"):
            f.unlink()

    cases = [(lambda d: (d / "model.safetensors").unlink(), "partial"),
             (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 10), "corrupt"),
             (drop_key, "missing \\['model.action_out_proj.bias'\\]"),
             (wrong_width, "has shape"),
             (no_stats, "statistics"),
             (lambda d: __import__("shutil").rmtree(d / "vlm"), "config and tokenizer of its VLM")]
    for i, (fn, needle) in enumerate(cases):
        d = _break(ckpt, tmp_path / f"bad{i}", fn)
        with pytest.raises(CheckpointError, match=needle) as e:
            load_policy(d)
        assert len(str(e.value).splitlines()) == 1

    def pi0(d):
        c = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**c, "type": "pi0"}))

    with pytest.raises(CheckpointError, match="LeRobot 'pi0' policy; load it with --policy pi0"):  # --policy smolvla --policy.path
        load_lerobot(_break(ckpt, tmp_path / "pi0", pi0))


@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo", "tpo"])
def test_cli_train_every_algorithm(algo, ckpt, tmp_path, capsys):
    from vlaforge.cli import main

    out = tmp_path / "run"
    group = [] if algo == "ppo" else [f"--{algo}.group-size", "2"]
    rc = main(["train", "--policy", "smolvla", "--policy.path", str(ckpt), "--algo", algo, *group,
               "--groups", "1", "--num-envs", "2", "--max-steps", "4", "--image-size", "32", "--iterations", "1",
               "--eval-every", "0", "--threads", "1", "--no-tensorboard", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert isinstance(load_policy(out / "final"), SmolVLA)
    from vlaforge.train.checkpoint import load_checkpoint

    q, opt_state, state, _ = load_checkpoint(out / "checkpoint")  # what --resume reads
    assert isinstance(q, SmolVLA) and state["iteration"] == 1 and opt_state["param_groups"]


def test_cli_sft_from_a_lerobot_dir(ckpt, tmp_path, capsys):
    from vlaforge.cli import main
    from vlaforge.data.demos import collect_demos

    venv = make_vec_env("pointreach", 2, image_size=32)
    collect_demos(venv, tmp_path / "demos", ["red-0"], 2, seed=0, noise=0.1)
    venv.close()
    rc = main(["sft", "--demos", str(tmp_path / "demos"), "--init", str(ckpt), "--out", str(tmp_path / "sft"),
               "--sft.steps", "2", "--sft.batch-size", "4", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    p = load_policy(tmp_path / "sft")
    assert isinstance(p, SmolVLA) and not torch.equal(p.model.action_out_proj.weight, load_lerobot(ckpt).model.action_out_proj.weight)


def test_cli_eval_and_errors(ckpt, tmp_path, capsys):
    from vlaforge.cli import main

    rc = main(["eval", "--checkpoint", str(ckpt), "--episodes", "1", "--num-envs", "1", "--tasks", "red-0",
               "--threads", "1", "--out", str(tmp_path / "eval.json")])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["train", "--policy", "smolvla", "--policy.path", str(tmp_path / "missing"), "--iterations", "1",
               "--threads", "1", "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no LeRobot checkpoint" in err and len(err.splitlines()) == 1
