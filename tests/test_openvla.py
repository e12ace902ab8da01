"""OpenVLA / OpenVLA-OFT policies (issue 16), offline, on tiny random checkpoints in the released layout.

The layout check is independent of the loader's module code: ``_reference_layout`` lists the released
key names and shapes from timm's/their module names, random tensors are written for exactly those keys
(sharded + index), and the logits the policy computes are compared with a functional re-computation
(ViT written here from the raw tensors, a plain transformers LlamaForCausalLM fed [BOS, patches, prompt]
unpadded, as their forward does). Plus: action (de)tokenisation against their numpy formulas,
act/evaluate consistency, save/load round trips, one update of PPO/GRPO/RLOO/TPO, one-line errors, the CLI.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import one_group_rollout, update_once  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from vlaforge.policies import build_policy, load_policy, save_policy  # noqa: E402
from vlaforge.policies.openvla import OpenVLAPolicy, load_prismatic, save_tiny_openvla  # noqa: E402
from vlaforge.policies.openvla.model import PROMPT  # noqa: E402
from vlaforge.policies.openvla.prismatic import (  # noqa: E402
    LayoutError,
    bins_to_normalized,
    normalized_to_bins,
    unnormalize,
)
from vlaforge.policies.openvla.tiny import make_tokenizer, tiny_config  # noqa: E402
from vlaforge.types import Observation  # noqa: E402

hf_logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:.*(is_gradient_checkpointing|gradient_checkpointing_enable).*:FutureWarning")
KW = dict(action_dim=2, state_dim=2, image_size=28, max_text_tokens=76, head_hidden=16)


# -- the released layout, stated independently of the loader ------------------------------------------

def _vit_keys(prefix, d, depth, mlp, patch, n_patch, cls, reg, layer_scale, attn_pool):
    k = {f"{prefix}.patch_embed.proj.weight": (d, 3, patch, patch), f"{prefix}.patch_embed.proj.bias": (d,),
         f"{prefix}.pos_embed": (1, n_patch + (0 if reg else int(cls)), d), f"{prefix}.norm.weight": (d,),
         f"{prefix}.norm.bias": (d,)}
    if cls:
        k[f"{prefix}.cls_token"] = (1, 1, d)
    if reg:
        k[f"{prefix}.reg_token"] = (1, reg, d)
    for i in range(depth):
        b = f"{prefix}.blocks.{i}"
        k.update({f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,), f"{b}.attn.qkv.weight": (3 * d, d),
                  f"{b}.attn.qkv.bias": (3 * d,), f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
                  f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,), f"{b}.mlp.fc1.weight": (mlp, d),
                  f"{b}.mlp.fc1.bias": (mlp,), f"{b}.mlp.fc2.weight": (d, mlp), f"{b}.mlp.fc2.bias": (d,)})
        if layer_scale:  # OpenVLA's ls_apply_patch: gamma -> scale_factor
            k.update({f"{b}.ls1.scale_factor": (d,), f"{b}.ls2.scale_factor": (d,)})
    if attn_pool:
        a = f"{prefix}.attn_pool"
        k.update({f"{a}.latent": (1, 1, d), f"{a}.q.weight": (d, d), f"{a}.q.bias": (d,), f"{a}.kv.weight": (2 * d, d),
                  f"{a}.kv.bias": (2 * d,), f"{a}.proj.weight": (d, d), f"{a}.proj.bias": (d,), f"{a}.norm.weight": (d,),
                  f"{a}.norm.bias": (d,), f"{a}.mlp.fc1.weight": (mlp, d), f"{a}.mlp.fc1.bias": (mlp,),
                  f"{a}.mlp.fc2.weight": (d, mlp), f"{a}.mlp.fc2.bias": (d,)})
    return k


def _reference_layout(raw):
    ov, tc = raw["vlaforge_vit_overrides"], raw["text_config"]
    n_patch = (raw["image_sizes"][0] // 14) ** 2
    k = _vit_keys("vision_backbone.featurizer", ov[0]["embed_dim"], ov[0]["depth"], ov[0]["mlp_hidden"], 14, n_patch,
                  True, 4, True, False)
    k.update(_vit_keys("vision_backbone.fused_featurizer", ov[1]["embed_dim"], ov[1]["depth"], ov[1]["mlp_hidden"], 14,
                       n_patch, False, 0, False, True))
    dv, D, V, M = ov[0]["embed_dim"] + ov[1]["embed_dim"], tc["hidden_size"], tc["vocab_size"], tc["intermediate_size"]
    k.update({"projector.fc1.weight": (4 * dv, dv), "projector.fc1.bias": (4 * dv,), "projector.fc2.weight": (D, 4 * dv),
              "projector.fc2.bias": (D,), "projector.fc3.weight": (D, D), "projector.fc3.bias": (D,),
              "language_model.model.embed_tokens.weight": (V, D), "language_model.model.norm.weight": (D,),
              "language_model.lm_head.weight": (V, D)})
    for i in range(tc["num_hidden_layers"]):
        b = f"language_model.model.layers.{i}"
        for n in ("q", "k", "v", "o"):
            k[f"{b}.self_attn.{n}_proj.weight"] = (D, D)
        k.update({f"{b}.mlp.gate_proj.weight": (M, D), f"{b}.mlp.up_proj.weight": (M, D),
                  f"{b}.mlp.down_proj.weight": (D, M), f"{b}.input_layernorm.weight": (D,),
                  f"{b}.post_attention_layernorm.weight": (D,)})
    return k


def _write_reference_checkpoint(d, raw, rename=None, seed=0):
    """Random tensors for exactly the reference keys, three shards + index, their config and a tokenizer."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.2 for k, s in _reference_layout(raw).items()}
    if rename:
        state[rename[1]] = state.pop(rename[0])
    keys = sorted(state)
    d.mkdir(parents=True)
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(keys), 3)):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: state[k] for k in part}, str(d / name))
        weight_map.update({k: name for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(raw))
    make_tokenizer(raw["text_config"]["vocab_size"] - raw["pad_to_multiple_of"]).save_pretrained(d)
    return state


def _functional_vit(state, prefix, depth, heads, x, n_prefix):
    """Second-to-last block output of a timm ViT written from the raw tensors, prefix tokens dropped."""
    W = lambda n: state[f"{prefix}.{n}"]  # noqa: E731
    x = F.conv2d(x, W("patch_embed.proj.weight"), W("patch_embed.proj.bias"), stride=14).flatten(2).transpose(1, 2)
    if n_prefix:  # DINOv2-reg: positions on the patches only, then [cls, registers]
        x = torch.cat([W("cls_token").expand(len(x), -1, -1), W("reg_token").expand(len(x), -1, -1), x + W("pos_embed")], 1)
    else:
        x = x + W("pos_embed")
    d = x.shape[-1]
    for i in range(depth - 1):
        def b(n, i=i):
            return W(f"blocks.{i}.{n}")

        def ls(n, b=b):
            return b(f"{n}.scale_factor") if n_prefix else 1.0
        h = F.layer_norm(x, (d,), b("norm1.weight"), b("norm1.bias"), 1e-6)
        qkv = F.linear(h, b("attn.qkv.weight"), b("attn.qkv.bias")).view(len(x), -1, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        x = x + ls("ls1") * F.linear(att.transpose(1, 2).reshape(len(x), -1, d), b("attn.proj.weight"), b("attn.proj.bias"))
        h = F.layer_norm(x, (d,), b("norm2.weight"), b("norm2.bias"), 1e-6)
        h = F.linear(F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"), b("mlp.fc2.bias"))
        x = x + ls("ls2") * h
    return x[:, n_prefix:]


def _obs(n=3, seed=0, size=28, views=1):
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 255, (n, views, size, size, 3), dtype=torch.uint8, generator=g),
                       torch.randn(n, 2, generator=g), (["Reach the red target", "reach blue", "go"] * n)[:n],
                       torch.zeros(n, dtype=torch.long))


def test_released_layout_loads_and_matches_an_independent_recomputation(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = tiny_config(2, 2, "pointreach")
    state = _write_reference_checkpoint(tmp_path / "ckpt", raw)
    p = build_policy("openvla", path=str(tmp_path / "ckpt"), **KW)
    obs = _obs(3)
    with torch.no_grad():
        x, valid = p._prefix(obs)
        h = p._hidden(x, valid, causal=True)
        ours = p.base_lm().lm_head(h[:, x.shape[1] - 1])  # full-vocabulary logits after the prompt
    # their pipeline, by hand: pixels normalised per tower, towers, projector, Llama on [BOS, patches, prompt, '▁']
    ov, tc = raw["vlaforge_vit_overrides"], raw["text_config"]
    img = obs.images[:, 0].permute(0, 3, 1, 2).float() / 255
    dino_px = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    sig_px = (img - 0.5) / 0.5
    feats = torch.cat([_functional_vit(state, "vision_backbone.featurizer", ov[0]["depth"], ov[0]["num_heads"], dino_px, 5),
                       _functional_vit(state, "vision_backbone.fused_featurizer", ov[1]["depth"], ov[1]["num_heads"], sig_px, 0)], 2)
    P = lambda n: state[f"projector.{n}"]  # noqa: E731
    patches = F.linear(F.gelu(F.linear(F.gelu(F.linear(feats, P("fc1.weight"), P("fc1.bias"))), P("fc2.weight"),
                                       P("fc2.bias"))), P("fc3.weight"), P("fc3.bias"))
    lm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in tc.items() if k != "model_type"})).eval()
    lm.load_state_dict({k[len("language_model."):]: v for k, v in state.items() if k.startswith("language_model.")})
    tok = make_tokenizer(tc["vocab_size"] - 64)
    for i, instr in enumerate(obs.instructions):
        ids = tok(PROMPT.format(instruction=instr.lower()), add_special_tokens=True)["input_ids"]
        ids = [tok.bos_token_id] * (ids[0] != tok.bos_token_id) + ids + [tok.convert_tokens_to_ids("▁")]
        emb = lm.get_input_embeddings()(torch.tensor([ids]))
        seq = torch.cat([emb[:, :1], patches[i:i + 1], emb[:, 1:]], 1)
        with torch.no_grad():
            ref = lm(inputs_embeds=seq).logits[0, -1]
        torch.testing.assert_close(ours[i], ref, atol=2e-4, rtol=2e-4)
    # the action head's rows are the lm_head rows of the bins: the same numbers as their full-vocabulary logits
    V = p.vocab
    torch.testing.assert_close(p.head(h[:, x.shape[1] - 1]), ours[:, V - 256:V].flip(-1))


def test_action_tokens_and_statistics_as_released():
    V, n = 32000, 256
    token_ids = np.array([31744, 31745, 31800, 31999, 31990])
    bins = np.linspace(-1, 1, n)
    centers = (bins[:-1] + bins[1:]) / 2
    theirs = centers[np.clip(V - token_ids - 1, 0, centers.shape[0] - 1)]  # predict_action
    ours = bins_to_normalized(torch.from_numpy(V - 1 - token_ids), n)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-7)
    a = np.array([-1.0, -0.99, -0.3, 0.0, 0.5, 0.999, 1.0, 1.7])
    their_tokens = V - np.digitize(np.clip(a, -1, 1), bins)  # ActionTokenizer
    assert ((V - 1 - normalized_to_bins(torch.from_numpy(a), n)).numpy() == their_tokens).all()
    lo, hi, mask = torch.tensor([-0.5, -1.0, 0.0]), torch.tensor([0.5, 2.0, 1.0]), torch.tensor([True, True, False])
    x = torch.tensor([0.2, -0.4, 0.7])
    expect = np.where(mask.numpy(), 0.5 * (x.numpy() + 1) * (hi - lo).numpy() + lo.numpy(), x.numpy())
    np.testing.assert_allclose(unnormalize(x, lo, hi, mask).numpy(), expect, atol=1e-6)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("openvla")
    return {"openvla": save_tiny_openvla(d / "openvla"), "openvla-oft": save_tiny_openvla(d / "oft", oft=True, component_format="pt")}


@pytest.mark.parametrize("family", ["openvla", "openvla-oft"])
def test_act_evaluate_consistency_and_sft(ckpts, family):
    torch.manual_seed(0)
    p = build_policy(family, path=str(ckpts[family]), chunk_size=3, **KW)
    obs = _obs(4)
    out = p.act(obs)
    C = 3 if family == "openvla-oft" else 1
    assert out.actions.shape == (4, C, 2) and out.log_prob.shape == (4, C, 2) and out.value.shape == (4,)
    assert out.actions.abs().max() <= 1
    lp, ent, v = p.evaluate(obs, out.taken)
    torch.testing.assert_close(lp, out.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(v, out.value, atol=1e-5, rtol=0)
    sub = p.evaluate(obs.index([2, 0]), {k: t[[2, 0]] for k, t in out.taken.items()})[0]  # another batch composition
    torch.testing.assert_close(sub, out.log_prob[[2, 0]], atol=1e-5, rtol=0)
    det = p.act(obs, deterministic=True).actions
    assert torch.equal(det, p.act(obs, deterministic=True).actions)
    loss, m = p.sft_loss(obs, out.actions)
    loss.backward()
    assert torch.isfinite(loss) and any(q.grad is not None for q in p.head_parameters())


@pytest.mark.parametrize("family", ["openvla", "openvla-oft"])
def test_one_update_of_every_algorithm(ckpts, family):
    p = build_policy(family, path=str(ckpts[family]), chunk_size=2, lora_rank=4, **KW)
    r = one_group_rollout(p, image_size=28)
    for algo, kw in [("ppo", dict(critic_warmup=0, minibatch_size=4, epochs=1)), ("grpo", dict(group_size=4, epochs=1)),
                     ("rloo", dict(group_size=4, epochs=1)), ("tpo", dict(reference="base", epochs=1))]:
        m, moved = update_once(p, algo, r, **kw)
        assert any("lora_" in n for n in moved), (algo, m)


def test_round_trips_full_and_lora(ckpts, tmp_path):
    obs = _obs(2)
    for family, lora in [("openvla", 0), ("openvla-oft", 4)]:
        torch.manual_seed(1)
        p = build_policy(family, path=str(ckpts[family]), chunk_size=2, lora_rank=lora, **KW)
        with torch.no_grad():  # trained state differs from the release
            for q in p.parameters():
                if q.requires_grad:
                    q.add_(0.01 * torch.randn_like(q))
        d = save_policy(p, tmp_path / family)
        q = load_policy(d)
        assert isinstance(q, OpenVLAPolicy) and q.cfg == p.cfg
        a, b = p.act(obs, deterministic=True), q.act(obs, deterministic=True)
        torch.testing.assert_close(a.actions, b.actions)
        torch.testing.assert_close(p.evaluate(obs, a.taken)[0], q.evaluate(obs, a.taken)[0])
        if lora == 0:  # the full model went back to the released layout: their loader reads it
            vlm, _ = load_prismatic(d / "backbone")
            rows = vlm.language_model.lm_head.weight[p.vocab - 256: p.vocab].flip(0)
            torch.testing.assert_close(rows, p.head.weight.detach())
            assert (d / "backbone" / "model.safetensors.index.json").exists() and (d / "backbone" / "tokenizer.json").exists()


def test_one_line_errors(ckpts, tmp_path):
    raw = tiny_config(2, 2, "pointreach")
    _write_reference_checkpoint(tmp_path / "renamed", raw,
                                rename=("vision_backbone.featurizer.blocks.0.ls1.scale_factor",
                                        "vision_backbone.featurizer.blocks.0.ls1.gamma"))
    with pytest.raises(LayoutError, match="missing.*scale_factor"):
        build_policy("openvla", path=str(tmp_path / "renamed"), **KW)
    part = tmp_path / "partial"
    shutil.copytree(ckpts["openvla"], part)
    shard = sorted(part.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(LayoutError, match=f"shard {shard.name}.*missing"):
        build_policy("openvla", path=str(part), **KW)
    with pytest.raises(ValueError, match="unnorm-key 'bridge' is not in .*pointreach"):
        build_policy("openvla", path=str(ckpts["openvla"]), unnorm_key="bridge", **KW)
    two = tmp_path / "two"
    shutil.copytree(ckpts["openvla"], two)
    c = json.loads((two / "config.json").read_text())
    c["norm_stats"]["libero"] = c["norm_stats"]["pointreach"]
    (two / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="choose one with --openvla.unnorm-key.*libero, pointreach"):
        build_policy("openvla", path=str(two), **KW)
    with pytest.raises(LayoutError, match="no OFT action head"):
        build_policy("openvla-oft", path=str(ckpts["openvla"]), **KW)
    with pytest.raises(ValueError, match="2-D actions but the suite has 7-D"):
        build_policy("openvla", path=str(ckpts["openvla"]), **{**KW, "action_dim": 7})


def test_cli_train_and_errors(ckpts, tmp_path, capsys):
    from vlaforge.cli import main

    out = tmp_path / "run"
    common = ["--policy.max-text-tokens", "76", "--policy.head-hidden", "16", "--groups", "1", "--num-envs", "2",
              "--max-steps", "2", "--image-size", "28", "--iterations", "1", "--eval-every", "0", "--no-tensorboard",
              "--no-progress", "--threads", "1"]
    rc = main(["train", "--policy", "openvla-oft", "--policy.path", str(ckpts["openvla-oft"]), "--chunk-size", "2",
               "--policy.lora-rank", "4", "--algo", "rloo", "--rloo.group-size", "2", "--out", str(out)] + common)
    assert rc == 0, capsys.readouterr().err
    p = load_policy(out / "final")
    assert isinstance(p, OpenVLAPolicy) and p.cfg.oft and p.chunk_size == 2 and p.cfg.lora_rank == 4
    capsys.readouterr()
    rc = main(["train", "--policy", "openvla", "--policy.path", str(ckpts["openvla"]), "--openvla.unnorm-key", "nope",
               "--out", str(tmp_path / "bad")] + common)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unnorm-key 'nope'" in err and len(err.splitlines()) == 1
