"""``vlaforge export``: each family's export loads back through its published-layout loader with the same outputs,
and carries a model card; what cannot be exported is refused in one line before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlaforge.cli import main
from vlaforge.policies import build_policy, load_policy, save_policy
from vlaforge.types import Observation


def _obs(n=3, size=28, state=2, views=1, instr="go to the red one"):
    g = torch.Generator().manual_seed(0)
    return Observation(torch.randint(0, 256, (n, views, size, size, 3), dtype=torch.uint8, generator=g).numpy(),
                       torch.randn(n, state, generator=g).numpy(), [instr] * n, np.zeros(n, np.int64))


def _same_actions(a, b, obs, atol=1e-5):
    torch.manual_seed(0)
    x = a.act(obs, deterministic=True).actions
    torch.manual_seed(0)
    y = b.act(obs, deterministic=True).actions
    assert torch.allclose(x, y, atol=atol), (x - y).abs().max()


@pytest.mark.parametrize("family", ["smolvla", "pi0"])
def test_lerobot_families_export_to_lerobot_and_load_back(tmp_path, family):
    import importlib

    mod = importlib.import_module(f"vlaforge.policies.{family}")
    load_lerobot, tiny_lerobot_dir = mod.load_lerobot, mod.tiny_lerobot_dir
    src = tiny_lerobot_dir(tmp_path / "released", image_size=32)
    p = load_policy(src)
    with torch.no_grad():  # "training" moved the weights
        for x in p.parameters():
            x.add_(0.01 * torch.randn_like(x))
    save_policy(p, tmp_path / "run" / "final")
    assert main(["export", str(tmp_path / "run"), "--to", "lerobot", "--out", str(tmp_path / "exp")]) == 0
    back = load_lerobot(tmp_path / "exp")
    _same_actions(p, back, _obs(size=32))
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "## Evaluation" in card and "No evaluation manifest" in card
    assert json.loads((tmp_path / "exp" / "vlaforge_export.json").read_text())["family"] == family


def test_openvla_oft_exports_the_released_layout(tmp_path):
    from vlaforge.policies.openvla import save_tiny_openvla

    released = save_tiny_openvla(tmp_path / "oft", oft=True)
    kw = dict(action_dim=2, state_dim=2, image_size=28, max_text_tokens=76, head_hidden=16, chunk_size=2)
    p = build_policy("openvla-oft", path=str(released), **kw)
    with torch.no_grad():
        for x in p.action_head.parameters():
            x.add_(0.05 * torch.randn_like(x))
    save_policy(p, tmp_path / "run" / "final")
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "action_head--1_checkpoint.safetensors").exists()
    back = build_policy("openvla-oft", path=str(tmp_path / "exp"), **kw)  # the released-layout loader
    _same_actions(p, back, _obs())


def test_hf_exports_merged_model_and_peft_adapter(tmp_path):
    from helpers import lora_qwen_policy
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    p, d = lora_qwen_policy(tmp_path / "tiny-qwen")
    save_policy(p, tmp_path / "run" / "final")
    assert main(["export", str(tmp_path / "run"), "--to", "peft", "--out", str(tmp_path / "adapter")]) == 0
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    base = AutoModelForImageTextToText.from_pretrained(d)
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits
    assert torch.allclose(a[..., :-32], b[..., :-32], atol=1e-4)  # the action rows are the policy head's in merged


def test_model_card_holds_the_command_seeds_and_eval_numbers(tmp_path):
    from vlaforge.policies.smolvla import tiny_lerobot_dir
    from vlaforge.train.loop import TrainConfig, train

    init = tmp_path / "smolvla"
    tiny_lerobot_dir(init, image_size=32)
    save_policy(load_policy(init), tmp_path / "sft")
    cfg = TrainConfig(algo="grpo", suite="pointreach", tasks="train", init=str(tmp_path / "sft"), iterations=1,
                      groups=2, num_envs=4, max_steps=8, image_size=32, eval_every=0, progress=False,
                      tensorboard=False, threads=1, seed=3, out=str(tmp_path / "run"))
    cfg.grpo.group_size = 2
    train(cfg)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "final"), "--suite", "pointreach", "--tasks", "train",
                 "--episodes", "3", "--num-envs", "3", "--threads", "1"]) == 0
    assert main(["export", str(tmp_path / "run"), "--to", "lerobot", "--out", str(tmp_path / "exp")]) == 0
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "vlaforge train --algo grpo" in card and "--seed 3" in card and "--grpo.group-size 2" in card
    assert "training seed: 3" in card and "| overall |" in card and "/3 |" in card


def test_what_cannot_be_exported_is_refused_before_work(tmp_path, capsys):
    save_policy(build_policy(state_dim=2, action_dim=2), tmp_path / "tiny")
    for to in ("hf", "lerobot"):
        assert main(["export", str(tmp_path / "tiny"), "--to", to, "--out", str(tmp_path / "x")]) == 2
        assert not (tmp_path / "x").exists()
        err = capsys.readouterr().err.strip()
        assert "no loader outside vlaforge" in err and len(err.splitlines()) == 1
    assert main(["export", str(tmp_path / "nothing"), "--to", "hf", "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("keep")
    from vlaforge.policies.smolvla import tiny_lerobot_dir

    tiny_lerobot_dir(tmp_path / "sv", image_size=32)
    assert main(["export", str(tmp_path / "sv"), "--to", "lerobot", "--out", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "a").read_text() == "keep"
    assert main(["export", str(tmp_path / "sv"), "--to", "peft", "--out", str(tmp_path / "y")]) == 2


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
