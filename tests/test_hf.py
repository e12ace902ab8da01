"""Hugging Face VLM policies (issue 6): every family from a tiny random config, offline.

Per family: act / evaluate (ratio 1) / SFT / one PPO and one TPO update move the parameters.
Plus: the LoRA reference is the same model with adapters disabled (no second copy), save/load
through `--policy hf`, peft-layout adapters, merged export into plain transformers, memory
switches, micro-batch gradient accumulation, CPU-offloaded AdamW, and clear errors.
"""

import json
import types
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers import lora_qwen_policy, one_group_rollout, update_once  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from vlaforge.algos import get_algo  # noqa: E402
from vlaforge.algos.common import accumulate  # noqa: E402
from vlaforge.algos.ppo import PPOConfig  # noqa: E402
from vlaforge.algos.ppo import loss as ppo_loss
from vlaforge.envs import make_vec_env  # noqa: E402
from vlaforge.hooks import NO_HOOKS  # noqa: E402
from vlaforge.policies import build_policy, load_policy, save_policy  # noqa: E402
from vlaforge.policies.hf import FAMILY_NAMES, HFVLA, HFConfig, export_merged, make_tiny_vlm, save_tiny_vlm  # noqa: E402
from vlaforge.policies.hf.families import detect_family  # noqa: E402
from vlaforge.policies.hf.offload import CPUOffloadAdamW  # noqa: E402
from vlaforge.rollout.collect import collect  # noqa: E402
from vlaforge.types import Observation  # noqa: E402

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*torchvision.*")
pytestmark = pytest.mark.filterwarnings("ignore:.*(is_gradient_checkpointing|gradient_checkpointing_enable).*:FutureWarning")


def _policy(family="llava", **kw) -> HFVLA:
    torch.manual_seed(0)
    model, tok, ip = make_tiny_vlm(family)
    cfg = HFConfig(path="(in memory)", **{"n_bins": 32, "max_text_tokens": 48, "chunk_size": 2, "lora_rank": 4,
                                          "head_hidden": 32, **kw})
    return HFVLA(cfg, loaded=(detect_family(model.config), model, tok, ip))


def _obs(n=3, seed=0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 255, (n, 1, 32, 32, 3), dtype=torch.uint8, generator=g),
                       torch.randn(n, 2, generator=g), (["reach the red target", "reach blue", "go"] * n)[:n],
                       torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_act_evaluate_sft_ppo_tpo(family):
    p = _policy(family)
    obs = _obs()
    out = p.act(obs)
    assert out.actions.shape == (3, 2, 2) and out.log_prob.shape == (3, 2, 2) and out.value.shape == (3,)
    assert out.taken["tokens"].shape == (3, 4) and (out.actions.abs() <= 1).all()
    lp, ent, v = p.evaluate(obs, out.taken)  # re-scoring the stored action: ratio 1
    torch.testing.assert_close(lp, out.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(v, out.value, atol=1e-5, rtol=0)
    sub = np.array([2, 0])  # ... also in another batch composition (fixed-length prompts)
    lp2, _, _ = p.evaluate(obs.index(sub), {k: x[sub] for k, x in out.taken.items()})
    torch.testing.assert_close(lp2, out.log_prob[sub], atol=1e-5, rtol=0)
    loss, m = p.sft_loss(obs, out.actions)
    loss.backward()
    assert torch.isfinite(loss) and any(x.grad is not None and x.grad.abs().sum() > 0 for x in p.backbone_parameters())
    p.zero_grad()
    r = one_group_rollout(p)
    m, moved = update_once(p, "ppo", r, critic_warmup=0, minibatch_size=4, epochs=1)
    assert m["train/optimizer_steps"] > 0 and any("lora_" in n for n in moved) and any(n.startswith("head.") for n in moved)
    m, moved = update_once(p, "tpo", r, reference="base", epochs=1)
    assert m["train/optimizer_steps"] == 1 and any("lora_" in n for n in moved)


@pytest.mark.parametrize("head", ["gaussian", "flow"])
def test_continuous_heads_and_group_algorithms(head):
    p = _policy("llava", head=head, lora_rank=0)
    obs = _obs()
    out = p.act(obs)
    lp, _, _ = p.evaluate(obs, out.taken)
    torch.testing.assert_close(lp, out.log_prob, atol=1e-4, rtol=0)
    r = one_group_rollout(p)
    for algo in ("grpo", "rloo"):
        m, moved = update_once(p, algo, r, group_size=4, epochs=1)
        assert m["train/optimizer_steps"] > 0 and any(n.startswith("vlm.") for n in moved)
    loss, _ = p.sft_loss(obs, out.actions)
    assert torch.isfinite(loss)


def _storage_bytes(module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def test_reference_is_the_same_model_with_adapters_disabled():
    model, tok, ip = make_tiny_vlm("paligemma")
    base_bytes = _storage_bytes(model)
    p = _policy("paligemma")
    extra = _storage_bytes(p) - base_bytes
    lora_head = sum(x.numel() * 4 for n, x in p.named_parameters() if "lora_" in n or "head" in n or "value" in n)
    assert extra <= lora_head + 4096  # adapters + heads (+ action stats), no second backbone
    obs = _obs()
    out = p.act(obs)
    with torch.no_grad(), p.reference():
        ref0 = p.evaluate(obs, out.taken)[0]
    torch.testing.assert_close(ref0, out.log_prob)  # LoRA B starts at zero: policy == reference
    with torch.no_grad():
        for n, x in p.named_parameters():
            if "lora_B" in n or n.startswith("head."):
                x.add_(0.05 * torch.randn_like(x))
    new = p.evaluate(obs, out.taken)[0]
    with torch.no_grad(), p.reference():
        ref1 = p.evaluate(obs, out.taken)[0]
    torch.testing.assert_close(ref1, ref0)  # the reference did not move with the adapters and the head
    assert (new - ref0).abs().max() > 1e-3
    with pytest.raises(ValueError, match="LoRA"):
        with _policy("llava", lora_rank=0).reference():
            pass


def test_save_load_through_policy_path_and_peft_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    p, d = lora_qwen_policy(tmp_path / "tiny-qwen")
    p.set_action_stats([-0.5, -0.5], [0.5, 0.5])
    obs = _obs()
    out = p.act(obs, deterministic=True)
    save_policy(p, tmp_path / "ckpt")
    files = {f.name for f in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "adapter"} <= files and "backbone" not in files
    assert {f.name for f in (tmp_path / "ckpt" / "adapter").iterdir()} >= {"adapter_config.json",
                                                                             "adapter_model.safetensors"}
    q = load_policy(tmp_path / "ckpt")
    torch.testing.assert_close(q.evaluate(obs, out.taken)[0], out.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(q.act(obs, deterministic=True).actions, out.actions)
    # the adapter alone, in the standard peft layout, on a plain transformers model
    base = AutoModelForImageTextToText.from_pretrained(d, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "ckpt" / "adapter")
    sd = peft_model.state_dict()
    mine = {k: v for k, v in p.vlm.state_dict().items() if "lora_B" in k}
    assert mine and all(torch.equal(sd[k], v) for k, v in mine.items())


def test_export_merged_reloads_as_plain_transformers(tmp_path):
    from transformers import AutoModelForImageTextToText

    p = _policy("paligemma")  # tied lm_head: export must untie it
    with torch.no_grad():
        for n, x in p.named_parameters():
            if "lora_B" in n or n.startswith("head."):
                x.add_(0.05 * torch.randn_like(x))
    obs = _obs()
    inputs = p._inputs(obs)
    with torch.no_grad():
        want = p.head(p._hidden(inputs)[:, -1])  # the policy's first-token bin logits
    export_merged(p, tmp_path / "merged")
    m = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", local_files_only=True).eval()
    assert not any("lora" in k for k in m.state_dict())
    with torch.no_grad():
        got = m(**inputs).logits[:, -1, p.first_action_id:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    emb = m.get_input_embeddings().weight[p.first_action_id:]
    orig = p.base_model().get_input_embeddings().weight[p.first_action_id:]
    assert torch.equal(emb, orig)  # input embeddings kept
    meta = json.loads((tmp_path / "merged" / "vlaforge_policy.json").read_text())
    assert meta["action_token_ids"] == [p.first_action_id, p.first_action_id + 32]


def test_memory_switches_all_on_run_an_update():
    p = _policy("idefics3", head="gaussian", gradient_checkpointing=True, autocast=True, weights_dtype="bfloat16",
                critic="separate", micro_batch=2, optimizer_on_cpu=True)
    assert getattr(p.base_model(), "is_activation_checkpointing", None) or p.base_model().is_gradient_checkpointing
    assert all(x.dtype == torch.bfloat16 for n, x in p.vlm.named_parameters() if "lora_" not in n)
    assert all(x.dtype == torch.float32 for n, x in p.vlm.named_parameters() if "lora_" in n)
    assert not any(x.requires_grad for x in p.critic_backbone.parameters())
    obs = _obs()
    out = p.act(obs)
    assert out.log_prob.dtype == torch.float32
    torch.testing.assert_close(p.evaluate(obs, out.taken)[0], out.log_prob, atol=1e-4, rtol=0)
    r = one_group_rollout(p)
    a = get_algo("ppo")
    cfg = a.config(critic_warmup=0, minibatch_size=8, epochs=1)
    batch, _ = a.prepare(r, cfg)
    opt = p.optimizer_class()([x for x in p.parameters() if x.requires_grad], lr=1e-2)
    assert isinstance(opt, CPUOffloadAdamW)
    crit = [x.detach().clone() for x in p.critic_backbone.parameters()]
    m = a.update(p, opt, batch, cfg, iteration=0, gen=torch.Generator().manual_seed(0))
    assert m["train/optimizer_steps"] == 1 and np.isfinite(m["train/loss"])
    assert all(torch.equal(a_, b_) for a_, b_ in zip(crit, p.critic_backbone.parameters()))


def test_micro_batches_accumulate_the_whole_batch_gradient():
    torch.manual_seed(0)
    p = build_policy(head="gaussian", chunk_size=2)  # the tiny VLA: the accumulation is algorithm code
    venv = make_vec_env("pointreach", 6, max_steps=6)
    r, _ = collect(p, venv, np.zeros(6, np.int64), np.arange(6))
    venv.close()
    a = get_algo("ppo")
    cfg = a.config(critic_warmup=0)
    batch, _ = a.prepare(r, cfg)
    batch.chunk_mask[:] = True
    s = PPOConfig(clip=0.2, level="action", ent_coef=0.01, vf_coef=0.5, value_clip=0.2)
    grads = []
    for micro in (0, 5):
        p.zero_grad()
        loss, m, pending = accumulate(lambda part: ppo_loss(p, part, s), len(batch), micro, batch.index)
        if pending:
            loss.backward()
        assert pending == (micro == 0)
        grads.append(torch.cat([x.grad.flatten() for x in p.parameters() if x.grad is not None]))
    assert len(batch) > 5
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_cpu_offload_adamw_matches_adamw():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    oa = torch.optim.AdamW(a.parameters(), lr=0.1, weight_decay=0.01)
    ob = CPUOffloadAdamW(b.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(3):
        x = torch.randn(5, 4)
        for mod, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            mod(x).pow(2).sum().backward()
            opt.step()
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y)
    state = ob.state_dict()  # tensors only: checkpointable with weights_only loads
    assert all(isinstance(v, torch.Tensor) for st in state["state"].values() for v in st.values())
    c = torch.nn.Linear(4, 3).to(torch.bfloat16)  # reloaded over bf16 weights: the state stays fp32 on the host
    oc = CPUOffloadAdamW(c.parameters(), lr=0.1)
    oc.load_state_dict(state)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for st in oc.state.values() for v in st.values())
    torch.testing.assert_close(oc.state[c.weight]["master"], ob.state[b.weight]["master"])


def test_clear_errors(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(ValueError, match="unknown VLM family 'llama'"):
        detect_family(LlamaConfig())
    with pytest.raises(ValueError, match="no vision tower"):
        detect_family(types.SimpleNamespace(model_type="llava", vision_config=None))
    with pytest.raises(ValueError, match="no Hugging Face model"):
        build_policy("hf", path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs --policy.path"):
        build_policy("hf")
    text_only = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=64)).save_pretrained(text_only)
    with pytest.raises(ValueError, match="unknown VLM family 'llama'"):
        build_policy("hf", path=str(text_only))
    model, _, _ = make_tiny_vlm("llava")
    model.save_pretrained(tmp_path / "no-proc")  # weights without tokenizer / image processor
    with pytest.raises(ValueError, match="tokenizer"):
        build_policy("hf", path=str(tmp_path / "no-proc"))
    with pytest.raises(ValueError, match="max_text_tokens"):
        _policy("llava", max_text_tokens=4).act(_obs())


def test_cli_train_with_policy_hf(tmp_path, capsys):
    from vlaforge.cli import main

    d = save_tiny_vlm(tmp_path / "tiny-llava", "llava")
    out = tmp_path / "run"
    rc = main(["train", "--policy", "hf", "--policy.path", str(d), "--head", "tokens", "--policy.lora-rank", "4",
               "--policy.n-bins", "32", "--policy.max-text-tokens", "48", "--algo", "rloo", "--rloo.group-size", "2",
               "--groups", "1", "--num-envs", "2", "--chunk-size", "2", "--max-steps", "4", "--image-size", "32",
               "--iterations", "1", "--eval-every", "0", "--no-tensorboard", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    p = load_policy(out / "final")
    assert isinstance(p, HFVLA) and p.cfg.lora_rank == 4 and (out / "checkpoint" / "adapter").is_dir()
    from vlaforge.train.checkpoint import load_checkpoint

    q, opt_state, state, _ = load_checkpoint(out / "checkpoint")  # what --resume reads
    assert isinstance(q, HFVLA) and state["iteration"] == 1 and opt_state["param_groups"]
    assert state["config"]["policy"] == "hf" and state["config"]["hf"]["path"] == str(d)
    capsys.readouterr()
    rc = main(["train", "--policy", "hf", "--policy.path", str(tmp_path / "missing"), "--iterations", "1",
               "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no Hugging Face model" in err and len(err.splitlines()) == 1


def test_recipes_run_on_an_hf_policy(tmp_path):
    """GRAPE (TPO with its scorer hooks) through the loop, and iRe-VLA's frozen RL stage / SL stage."""
    from vlaforge.recipes import recipe_defaults, run_recipe
    from vlaforge.recipes.ire_vla import reset_value_head, sl_stage
    from vlaforge.train.loop import make_optimizer

    d = save_tiny_vlm(tmp_path / "tiny-idefics3", "idefics3")
    p = build_policy("hf", path=str(d), n_bins=32, max_text_tokens=48, chunk_size=2, lora_rank=4, head_hidden=32)
    save_policy(p, tmp_path / "init")
    cfg = recipe_defaults("grape")
    cfg.init, cfg.out, cfg.iterations, cfg.groups, cfg.num_envs = str(tmp_path / "init"), str(tmp_path / "g"), 1, 1, 4
    cfg.tpo.group_size, cfg.max_steps, cfg.image_size, cfg.chunk_size = 4, 4, 32, 2
    cfg.eval_every, cfg.progress, cfg.tensorboard = 0, False, False
    run_recipe(cfg)
    row = json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "grape/r_self" in row and np.isfinite(row["grape/r_self"])
    # iRe-VLA: the RL stage freezes the backbone (LoRA adapters); the SL stage unfreezes exactly them
    q = load_policy(tmp_path / "init")
    frozen = make_optimizer(q, types.SimpleNamespace(freeze_backbone=True, lr=1e-3, lr_warmup=0, value_lr=1e-3,
                                                  weight_decay=0.0))
    trainable = {id(x) for g in frozen.param_groups for x in g["params"]}
    assert not any(id(x) in trainable for x in q.backbone_parameters()) and q.backbone_parameters()
    assert reset_value_head(q) == 3
    from vlaforge.data.replay import SuccessBuffer

    buf = SuccessBuffer()
    r = one_group_rollout(q)
    buf.add(r)
    lora0 = {n: x.detach().clone() for n, x in q.named_parameters() if "lora_" in n}
    m = sl_stage(q, None, buf, {}, steps=1, lr=1e-2, demo_fraction=0.5, batch_size=4)
    assert np.isfinite(m["sft/loss"]) and any(not torch.equal(x, lora0[n]) for n, x in q.named_parameters() if n in lora0)
    assert not any(x.requires_grad for n, x in q.vlm.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_recipe_updates_each_family(family):
    """Each recipe's algorithm preset, with its own parts (GRAPE's score, VLA-RL's process reward,
    iRe-VLA's frozen backbone), takes an optimizer step on every family's policy."""
    from vlaforge.envs import suite_spec
    from vlaforge.recipes import RECIPES, recipe_defaults
    from vlaforge.recipes.grape import hooks_for
    from vlaforge.rewards.rprm import RPRM, RPRMShaper
    from vlaforge.train.loop import make_optimizer

    p = _policy(family)
    for name in sorted(RECIPES, key=lambda n: n == "ire-vla"):  # iRe-VLA last: it freezes the backbone
        cfg = recipe_defaults(name)
        acfg = cfg.algo_cfg
        for k, v in {"minibatch_size": 4, "epochs": 1, "critic_warmup": 0, "group_size": 4}.items():
            if hasattr(acfg, k):
                setattr(acfg, k, v)
        rr = one_group_rollout(p)  # collected by the current policy (the previous recipe moved it)
        hooks = hooks_for(cfg) if name == "grape" else NO_HOOKS
        if name == "vla-rl":
            RPRMShaper(RPRM.for_spec(suite_spec("pointreach", image_size=32)), cfg.vla_rl.rprm_weight).shape_rewards(rr)
        a = get_algo(cfg.algo)
        batch, _ = a.prepare(rr, acfg, hooks)
        cfg.lr = cfg.value_lr = 1e-2
        opt = make_optimizer(p, cfg)
        before = {n: x.detach().clone() for n, x in p.named_parameters()}
        m = a.update(p, opt, batch, acfg, iteration=0, gen=torch.Generator().manual_seed(0))
        moved = {n for n, x in p.named_parameters() if not torch.equal(before[n], x)}
        assert m["train/optimizer_steps"] > 0 and any(n.startswith("head.") for n in moved), name
        backbone = {id(x) for x in p.backbone_parameters()}
        touched_backbone = any(id(x) in backbone for n, x in p.named_parameters() if n in moved)
        assert touched_backbone != (name == "ire-vla"), name  # iRe-VLA's RL stage never moves the backbone
