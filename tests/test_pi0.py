"""π0 without LeRobot (issue 24): a tiny random checkpoint in LeRobot's published pi0 layout, offline.

Layout (hub key names, statistics, tokenizer) and where each weight lands; the prefix-cache decomposition against
LeRobot's joint-sequence training forward restated (pinned commit 7427f31) and against transformers' own PI0 port;
act/evaluate consistency of the SDE chain and DSRL-style noise input; one update of SFT/PPO/GRPO/RLOO/TPO/DSRL;
LoRA + bf16 + checkpointing + micro-batches; vlaforge checkpoints and LeRobot export; one-line errors; the CLI.
"""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import one_group_rollout, update_once  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.models.gemma import modeling_gemma  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from vlaforge.envs import make_vec_env  # noqa: E402
from vlaforge.policies import CheckpointError, load_policy, read_config, save_policy  # noqa: E402
from vlaforge.policies.pi0 import Pi0, export_lerobot, load_lerobot, tiny_lerobot_dir  # noqa: E402
from vlaforge.policies.pi0.lerobot import to_ours  # noqa: E402
from vlaforge.rollout.collect import collect  # noqa: E402
from vlaforge.types import Observation  # noqa: E402

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*torchvision.*")
pytestmark = pytest.mark.filterwarnings("ignore:.*(is_gradient_checkpointing|gradient_checkpointing_enable).*:FutureWarning")
P = "model.paligemma_with_expert."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_lerobot_dir(tmp_path_factory.mktemp("pi0") / "tiny", chunk_size=6, n_action_steps=4)


def _obs(n=3, seed=0, views=1) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 255, (n, views, 40, 40, 3), dtype=torch.uint8, generator=g),
                       torch.randn(n, 2, generator=g), (["reach the red target", "reach blue", "go"] * n)[:n],
                       torch.zeros(n, dtype=torch.long))


def test_lerobot_layout_loads_key_for_key(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["type"] == "pi0" and cfg["n_action_steps"] == 4 and cfg["num_inference_steps"] == 3
    w = load_file(str(ckpt / "model.safetensors"))
    # the hub's names: SigLIP under vision_tower.vision_model, the tied embedding saved as lm_head, the expert's head
    assert f"{P}paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight" in w
    assert f"{P}paligemma.lm_head.weight" in w and f"{P}paligemma.model.language_model.embed_tokens.weight" not in w
    assert f"{P}gemma_expert.lm_head.weight" in w
    # π0's layout (8 heads of 4, one kv head; VLM 32 wide, expert 16): q (32, W), k/v (4, W), expert o_proj (16, 32)
    assert w[f"{P}paligemma.model.language_model.layers.1.self_attn.q_proj.weight"].shape == (32, 32)
    assert w[f"{P}paligemma.model.language_model.layers.1.self_attn.k_proj.weight"].shape == (4, 32)
    assert w[f"{P}gemma_expert.model.layers.0.self_attn.q_proj.weight"].shape == (32, 16)
    assert w[f"{P}gemma_expert.model.layers.0.self_attn.v_proj.weight"].shape == (4, 16)
    assert w[f"{P}gemma_expert.model.layers.0.self_attn.o_proj.weight"].shape == (16, 32)
    assert w["model.state_proj.weight"].shape == (16, 8)  # the state is an EXPERT token in π0
    assert w["model.action_time_mlp_in.weight"].shape == (16, 32)
    p = load_policy(ckpt)  # dispatches on LeRobot's config.json
    assert isinstance(p, Pi0) and p.chunk_size == 4 and p.action_dim == 2 and p.cfg.views == 1
    own = p.state_dict()
    m = p.model.paligemma_with_expert
    for k, v in w.items():
        if k == f"{P}gemma_expert.lm_head.weight":
            continue
        ours = {f"{P}paligemma.lm_head.weight": f"{P}paligemma.model.language_model.embed_tokens.weight"}.get(
            k, k.replace("vision_tower.vision_model.", "vision_tower."))
        assert torch.equal(own[ours], v), k
    # and the modules that read them
    assert torch.equal(m.paligemma.model.language_model.embed_tokens.weight, w[f"{P}paligemma.lm_head.weight"])
    assert torch.equal(m.paligemma.model.vision_tower.embeddings.patch_embedding.weight,
                       w[f"{P}paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight"])
    assert torch.equal(m.gemma_expert.model.layers[1].mlp.down_proj.weight,
                       w[f"{P}gemma_expert.model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(p.model.state_proj.weight, w["model.state_proj.weight"])
    stats = load_file(str(next(ckpt.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))))
    torch.testing.assert_close(p.state_shift, stats["observation.state.mean"])
    torch.testing.assert_close(p.action_scale, stats["action.std"] + 1e-8)
    assert read_config(ckpt)["policy"]["family"] == "pi0" and read_config(ckpt)["policy"]["state_dim"] == 2
    # empty_cameras: LeRobot adds that many blank, masked camera features at run time
    d = _break(ckpt, ckpt.parent / "empty_cam", lambda d: _edit_config(d, empty_cameras=1))
    q = load_policy(d)
    assert q.cfg.views == 2 and q.cfg.image_keys[-1] == "observation.images.empty_camera_0"
    out = q.act(_obs(), deterministic=True)  # one view from the suite: the second image is blank and masked
    torch.testing.assert_close(out.actions, p.act(_obs(), deterministic=True).actions, atol=1e-5, rtol=0)
    # older openpi conversions: time_mlp_* names, the embedding under its own name
    alias = to_ours({"model.time_mlp_in.weight": torch.ones(1), f"{P}paligemma.lm_head.weight": torch.zeros(1),
                     f"{P}paligemma.model.language_model.embed_tokens.weight": torch.ones(2)})
    assert set(alias) == {"model.action_time_mlp_in.weight", f"{P}paligemma.model.language_model.embed_tokens.weight"}
    assert alias[f"{P}paligemma.model.language_model.embed_tokens.weight"].numel() == 2


def _joint_velocity(m, images, img_masks, ids, lmask, state, x, t):
    """LeRobot's ``PI0Pytorch.forward`` restated (pinned commit 7427f31): prefix (SigLIP tokens, scaled language
    embeddings) and suffix (state token, action tokens) in ONE sequence with ``make_att_2d_masks`` of ar =
    [0 ... 0 | 1, 1, 0 ... 0], the openpi additive mask value, positions cumsum(pad) - 1, and per layer
    ``compute_layer_complete``: each stream's norm and q/k/v, transformers' Gemma rotary embedding and eager attention
    over the concatenation, each stream's o_proj / residual / norm / MLP / residual; the final norms."""
    pw = m.paligemma_with_expert
    pg = pw.paligemma.model
    embs, pads = [], []
    for img, msk in zip(images, img_masks):
        e = pg.get_image_features(img).pooler_output
        embs.append(e)
        pads.append(msk[:, None].expand(e.shape[0], e.shape[1]))
    embs.append(pg.language_model.get_input_embeddings()(ids))  # transformers 5: scaled by sqrt(width) inside
    pads.append(lmask)
    prefix = torch.cat(embs, 1)
    B, Lp = prefix.shape[:2]
    s = m.state_proj(state)[:, None]
    a = m.action_in_proj(x)
    W = a.shape[-1]
    frac = torch.linspace(0.0, 1.0, W // 2, dtype=torch.float64)
    period = m.arch.min_period * (m.arch.max_period / m.arch.min_period) ** frac
    ang = t[:, None].double() * (1.0 / period * 2 * torch.pi)
    te = torch.cat([ang.sin(), ang.cos()], -1).float()[:, None].expand_as(a)
    suffix = torch.cat([s, m.action_time_mlp_out(torch.nn.functional.silu(m.action_time_mlp_in(torch.cat([a, te], 2))))], 1)
    Ls = suffix.shape[1]
    pad = torch.cat(pads + [torch.ones(B, Ls, dtype=torch.bool)], 1)
    ar = torch.tensor([0] * Lp + [1, 1] + [0] * (Ls - 2))[None].expand(B, -1)
    c = ar.cumsum(1)
    mask2d = (c[:, None, :] <= c[:, :, None]) & (pad[:, None, :] & pad[:, :, None])
    mask4d = torch.where(mask2d[:, None], 0.0, -2.3819763e38)
    pos = pad.long().cumsum(1) - 1
    rotary = pg.language_model.rotary_emb
    streams = [prefix, suffix]
    for lv, le in zip(pg.language_model.layers, pw.gemma_expert.model.layers):
        layers = (lv, le)
        qs, ks, vs = [], [], []
        for layer, h in zip(layers, streams):
            hn = layer.input_layernorm(h)
            shape = (*hn.shape[:-1], -1, layer.self_attn.head_dim)
            qs.append(layer.self_attn.q_proj(hn).view(shape).transpose(1, 2))
            ks.append(layer.self_attn.k_proj(hn).view(shape).transpose(1, 2))
            vs.append(layer.self_attn.v_proj(hn).view(shape).transpose(1, 2))
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        cos, sin = rotary(torch.zeros(B, q.shape[2], q.shape[-1]), pos)
        q, k = modeling_gemma.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        att, _ = modeling_gemma.eager_attention_forward(lv.self_attn, q, k, v, mask4d, lv.self_attn.scaling)
        att = att.reshape(B, -1, 8 * lv.self_attn.head_dim)
        out, start = [], 0
        for layer, h in zip(layers, streams):
            o = layer.self_attn.o_proj(att[:, start:start + h.shape[1]]) + h
            out.append(layer.mlp(layer.post_attention_layernorm(o)) + o)
            start += h.shape[1]
        streams = out
    return m.action_out_proj(pw.gemma_expert.model.norm(streams[1])[:, -m.arch.chunk_size:])


def _inputs(views=2):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(views)]
    masks = [torch.ones(2, dtype=torch.bool)] + [torch.tensor([True, False])] * (views - 1)  # an empty camera
    ids = torch.randint(4, 60, (2, 7), generator=g)
    lmask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)  # right padding
    return images, masks, ids, lmask, torch.randn(2, 8, generator=g), torch.randn(2, 6, 8, generator=g)


def test_prefix_cache_equals_lerobot_joint_forward(tmp_path):
    p = load_lerobot(tiny_lerobot_dir(tmp_path / "two", chunk_size=6, n_action_steps=4, views=2))
    m = p.model
    images, masks, ids, lmask, state, x = _inputs()
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        h, kv, pad = m.prefix(images, masks, ids, lmask)
        ours = m.velocity(kv, pad, state, x, t)
        ref = _joint_velocity(m, images, masks, ids, lmask, state, x, t)
        # the K-step batched pass of evaluate: rows repeated, one call
        kv2, pad2 = p._repeat((kv, state), pad, 3)
        many = m.velocity(kv2[0], pad2, kv2[1], x.repeat_interleave(3, 0), t.repeat_interleave(3))
    assert ours.abs().max() > 0.1  # not a trivially zero output
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(many[::3], ours, atol=1e-5, rtol=1e-5)
    # the state token matters, the padded language tokens and the empty camera do not
    assert not torch.allclose(m.velocity(kv, pad, state + 1, x, t), ours)
    ids2 = ids.clone()
    ids2[1, 4:] = 5
    images2 = [images[0], torch.stack([images[1][0], -images[1][1]])]
    with torch.no_grad():
        _, kv3, pad3 = m.prefix(images2, masks, ids2, lmask)
        torch.testing.assert_close(m.velocity(kv3, pad3, state, x, t), ours, atol=1e-5, rtol=1e-5)


def test_prefix_cache_equals_transformers_pi0(ckpt):
    """transformers 5.25 ships its own PI0 port (``PI0ForConditionalGeneration``, LeRobot hub weights mapped by its
    conversion table): the same weights, renamed as that table says, give the same velocity."""
    import transformers as T

    if not hasattr(T, "PI0ForConditionalGeneration"):
        pytest.skip("this transformers has no PI0 model")
    p = load_lerobot(ckpt)
    m, arch = p.model, p.model.arch
    pw = m.paligemma_with_expert
    vlm = pw.paligemma.config.to_dict()
    vlm["image_token_id"] = arch.vlm["vocab_size"]
    cfg = T.PI0Config(vlm_config=vlm, dit_config=pw.gemma_expert.config.to_dict(), chunk_size=arch.chunk_size,
                      max_state_dim=arch.max_state_dim, max_action_dim=arch.max_action_dim)
    ref = T.PI0ForConditionalGeneration(cfg).eval()
    rename = {"paligemma_with_expert.paligemma.model.": "model.vlm.", "paligemma_with_expert.gemma_expert.model.":
              "model.dit.", "state_proj": "embed_action_time.state_proj", "action_in_proj":
              "embed_action_time.action_in_proj", "action_time_mlp": "embed_action_time.action_time_mlp"}
    state = {}
    for k, v in m.state_dict().items():
        for a, b in rename.items():
            if k.startswith(a):
                k = b + k[len(a):]
                break
        state[k] = v
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"model.dit.embed_tokens.weight"}, (missing, unexpected)
    images, masks, ids, lmask, state_in, x = _inputs(views=1)
    t = torch.tensor([0.3, 0.9])
    n_img = (arch.image_size // arch.vision["patch_size"]) ** 2
    input_ids = torch.cat([torch.full((2, n_img), arch.vlm["vocab_size"]), ids], 1)
    att = torch.cat([torch.ones(2, n_img, dtype=torch.long), lmask.long()], 1)
    with torch.no_grad():
        _, kv, pad = m.prefix(images, masks, ids, lmask)
        ours = m.velocity(kv, pad, state_in, x, t)
        theirs = ref(state=state_in, noise=x, timestep=t, input_ids=input_ids, pixel_values=images[0][:, None],
                     pixel_attention_mask=torch.ones(2, 1, dtype=torch.bool), attention_mask=att).logits
    # transformers computes the time embedding in fp32 (periods down to 4e-3: angles up to ~1.6e3 rad), LeRobot and
    # vlaforge in float64: the looser tolerance covers that rounding
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


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
    sub = np.array([2, 0])  # another batch composition
    lp2, _, _ = p.evaluate(obs.index(sub), {k: x[sub] for k, x in out.taken.items()})
    torch.testing.assert_close(lp2, out.log_prob[sub], atol=1e-4, rtol=0)
    d = p.act(obs, deterministic=True)
    assert torch.equal(d.actions, p.act(obs, deterministic=True).actions)
    o2 = p.act(obs, temperature=2.0)  # sampling and scoring at one temperature
    torch.testing.assert_close(p.evaluate(obs, o2.taken, temperature=2.0)[0], o2.log_prob, atol=1e-5, rtol=0)
    w = torch.randn(3, 4, 2)  # DSRL-style steering: the initial noise of the exposed block
    a1 = p.act(obs, deterministic=True, noise=w).actions
    assert torch.equal(a1, p.act(obs, deterministic=True, noise=w).actions) and not torch.equal(a1, d.actions)
    with pytest.raises(ValueError, match="initial noise"):
        p.act(obs, noise=torch.randn(3, 5, 2))
    loss, _ = p.sft_loss(obs, out.actions, torch.ones(3, 4, dtype=torch.bool))
    loss.backward()  # LeRobot's defaults train everything: the gradient reaches the VLM too
    assert torch.isfinite(loss) and p.model.action_out_proj.weight.grad.abs().sum() > 0
    assert p.model.state_proj.weight.grad.abs().sum() > 0
    assert p.model.paligemma_with_expert.paligemma.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_every_algorithm_updates(tmp_path):
    p = load_lerobot(tiny_lerobot_dir(tmp_path / "t", chunk_size=6, n_action_steps=4, train_expert_only=True))
    assert not any(x.requires_grad for x in p.model.paligemma_with_expert.paligemma.parameters())
    r = one_group_rollout(p)
    m, moved = update_once(p, "ppo", r, critic_warmup=0, minibatch_size=4, epochs=1)
    assert m["train/optimizer_steps"] > 0 and any("gemma_expert" in n for n in moved)
    assert any("value_net" in n for n in moved) and any("state_proj" in n for n in moved)
    for algo in ("grpo", "rloo"):
        m, moved = update_once(p, algo, r, group_size=4, epochs=1)
        assert m["train/optimizer_steps"] > 0 and any("action_out_proj" in n for n in moved)
    m, moved = update_once(p, "tpo", r, epochs=1)
    assert m["train/optimizer_steps"] == 1 and any("gemma_expert" in n for n in moved)
    # SFT: one step of the flow-matching loss moves the expert
    before = p.model.action_time_mlp_in.weight.detach().clone()
    opt = torch.optim.AdamW([x for x in p.parameters() if x.requires_grad], lr=1e-2)
    loss, metrics = p.sft_loss(_obs(4), torch.rand(4, 4, 2) * 2 - 1)
    loss.backward()
    opt.step()
    assert metrics["sft/flow_mse"] > 0 and not torch.equal(before, p.model.action_time_mlp_in.weight)


@pytest.mark.parametrize("family", ["pi0", "smolvla"])
def test_dsrl_steers_the_frozen_flow_vla(ckpt, tmp_path, family):
    """DSRL (shared by π0 and SmolVLA through FlowChunkPolicy): a noise policy over the exposed block's initial noise;
    w = 0 at the start (the base policy's deterministic action), one update trains only the noise policy, the saved
    policy acts through it again."""
    from vlaforge.algos import get_algo
    from vlaforge.errors import UsageError
    from vlaforge.policies.smolvla import tiny_lerobot_dir as smol_dir

    torch.manual_seed(0)
    p = load_lerobot(ckpt) if family == "pi0" else load_policy(smol_dir(tmp_path / "s", chunk_size=6, n_action_steps=4))
    obs = _obs()
    base = p.act(obs, deterministic=True).actions
    algo = get_algo("dsrl")
    cfg = algo.config(batch_size=4, utd=0.5)
    st = algo.new_state(p, cfg)
    assert torch.allclose(p.act(obs, deterministic=True).actions, base, atol=1e-6)
    vla = {k: v.clone() for k, v in p.state_dict().items() if not k.startswith("noise_policy.")}
    noise = [x.detach().clone() for x in p.noise_policy.parameters()]
    venv = make_vec_env("pointreach", 4, image_size=32, max_steps=12)  # 3 decisions: transitions with an s'
    r, _ = collect(p, venv, np.zeros(4, np.int64), np.arange(4))
    venv.close()
    batch, _ = algo.prepare(r, cfg)
    assert len(batch) >= 8 and batch.fields["w"].shape[1:] == (4, 2) and batch.fields["w"].abs().max() < cfg.bound
    m = algo.update(p, torch.optim.Adam(p.parameters()), batch, cfg, 0, torch.Generator().manual_seed(0), state=st)
    assert m["train/optimizer_steps"] > 0 and all(np.isfinite(v) for v in m.values())
    assert all(torch.equal(v, p.state_dict()[k]) for k, v in vla.items())  # the VLA is frozen
    assert any(not torch.equal(a, b) for a, b in zip(noise, p.noise_policy.parameters()))
    with pytest.raises(UsageError, match="noise policy"):
        p.evaluate(obs, {})
    save_policy(p, tmp_path / "dsrl")
    q = load_policy(tmp_path / "dsrl")
    assert q.noise_policy is not None and q.cfg.dsrl_bound == cfg.bound
    torch.testing.assert_close(q.act(obs, deterministic=True).actions, p.act(obs, deterministic=True).actions)


def test_lora_bf16_checkpointing_micro_batches(ckpt, tmp_path):
    torch.manual_seed(0)
    p = load_lerobot(ckpt, lora_rank=4, weights_dtype="bfloat16", autocast=True, gradient_checkpointing=True,
                     micro_batch=2)
    trainable = [n for n, x in p.named_parameters() if x.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_net") for n in trainable)
    assert p.model.paligemma_with_expert.gemma_expert.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
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
    save_policy(p, tmp_path / "ck")
    q = load_policy(tmp_path / "ck")
    assert isinstance(q, Pi0) and q.cfg.lora_rank == 4 and (tmp_path / "ck" / "tokenizer").is_dir()
    for (n, a), (_, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert torch.equal(a, b), n
    p.cfg.autocast, p.cfg.weights_dtype = False, "float32"
    export_lerobot(p, tmp_path / "exported")
    assert f"{P}paligemma.lm_head.weight" in load_file(str(tmp_path / "exported" / "model.safetensors"))
    e = load_policy(tmp_path / "exported")
    w = torch.randn(3, 4, 2)
    torch.testing.assert_close(e.act(obs, True, noise=w).actions, p.act(obs, True, noise=w).actions, atol=3e-2, rtol=0)


def _edit_config(d, **kw):
    c = json.loads((d / "config.json").read_text())
    c.update(kw)
    (d / "config.json").write_text(json.dumps(c))


def _break(src, dst, fn):
    shutil.copytree(src, dst)
    fn(dst)
    return dst


def test_bad_checkpoints_one_line_errors(ckpt, tmp_path):
    def drop_key(d):
        w = load_file(str(d / "model.safetensors"))
        del w["model.action_out_proj.bias"]
        save_file(w, str(d / "model.safetensors"))

    def edit(**kw):
        return lambda d: _edit_config(d, **kw)

    def no_stats(d):
        for f in d.glob("*normalizer_processor.safetensors"):
            f.unlink()

    c = json.loads((ckpt / "config.json").read_text())
    cases = [(lambda d: (d / "model.safetensors").unlink(), "partial"),
             (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 10), "corrupt"),
             (drop_key, "missing \\['model.action_out_proj.bias'\\]"),
             (edit(action_expert_variant={**c["action_expert_variant"], "width": 24}), "has shape"),
             (edit(action_expert_variant={**c["action_expert_variant"], "head_dim": 8}), "must share head_dim"),
             (edit(paligemma_variant="gemma_9b"), "not one of gemma_300m, gemma_2b"),
             (edit(use_relative_actions=True), "use_relative_actions"),
             (edit(image_resolution=[32, 48]), "not square"),
             (no_stats, "statistics"),
             (lambda d: shutil.rmtree(d / "tokenizer"), "PaliGemma's tokenizer")]
    for i, (fn, needle) in enumerate(cases):
        d = _break(ckpt, tmp_path / f"bad{i}", fn)
        with pytest.raises(CheckpointError, match=needle) as e:
            load_policy(d)
        assert len(str(e.value).splitlines()) == 1
    from vlaforge.policies.smolvla import tiny_lerobot_dir as smol_dir

    with pytest.raises(CheckpointError, match="'smolvla' policy; --policy pi0 reads pi0 only"):
        load_lerobot(smol_dir(tmp_path / "smol"))


@pytest.mark.parametrize("algo", ["grpo"])
def test_cli_train_sft_and_eval(algo, ckpt, tmp_path, capsys):
    from vlaforge.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--policy", "pi0", "--policy.path", str(ckpt), "--algo", algo, f"--{algo}.group-size", "2",
               "--groups", "1", "--num-envs", "2", "--max-steps", "4", "--image-size", "32", "--iterations", "1",
               "--eval-every", "0", "--threads", "1", "--no-tensorboard", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert isinstance(load_policy(out / "final"), Pi0)
    from vlaforge.data.demos import collect_demos

    venv = make_vec_env("pointreach", 2, image_size=32)
    collect_demos(venv, tmp_path / "demos", ["red-0"], 2, seed=0, noise=0.1)
    venv.close()
    rc = main(["sft", "--demos", str(tmp_path / "demos"), "--init", str(ckpt), "--out", str(tmp_path / "sft"),
               "--sft.steps", "2", "--sft.batch-size", "4", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    q = load_policy(tmp_path / "sft")
    assert isinstance(q, Pi0) and not torch.equal(q.model.action_out_proj.weight, load_lerobot(ckpt).model.action_out_proj.weight)
    rc = main(["eval", "--checkpoint", str(ckpt), "--episodes", "1", "--num-envs", "1", "--tasks", "red-0",
               "--threads", "1", "--out", str(tmp_path / "eval.json")])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["train", "--policy", "pi0", "--policy.path", str(tmp_path / "missing"), "--iterations", "1",
               "--threads", "1", "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no LeRobot checkpoint" in err and len(err.splitlines()) == 1
