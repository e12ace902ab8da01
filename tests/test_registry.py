"""Policy families are plug-ins (issue 24): a family is a folder plus one ``register_family`` line, nothing else
branches on a family's name, and a toy family registered here trains, saves, loads and evaluates with no other
file changed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlaforge.policies import build_policy, load_policy, registry, save_policy
from vlaforge.policies.base import load_weights
from vlaforge.policies.tiny import TinyConfig, TinyVLA

SRC = Path(__file__).resolve().parents[1] / "src" / "vlaforge"
BRANCH = re.compile(r"""(family|cfg\.policy|\.policy)\s*(==|!=|in\s*\()\s*["'(]""")
PENDING: set[str] = set()


def test_no_branch_on_a_family_name_outside_the_registry():
    hits = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).as_posix()
        family_folder = rel.startswith("policies/") and rel.count("/") >= 2  # a family names its own variants
        if rel == "policies/registry.py" or rel in PENDING or family_folder:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if BRANCH.search(line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert hits == [], "\n".join(hits)


@dataclass
class ToyConfig(TinyConfig):
    pass


class ToyVLA(TinyVLA):
    def config_dict(self) -> dict:
        return {**super().config_dict(), "family": "toy"}


def build_toy(name, **cfg):
    return ToyVLA(ToyConfig(**cfg))


def load_toy(path, name, cfg, device="cpu", trust_remote_code=False):
    from safetensors.torch import load_file

    p = build_toy(name, **cfg)
    load_weights(p, load_file(str(Path(path) / "model.safetensors")), path)
    return p.to(device)


def fresh_toy(name, cfg, spec):
    return build_toy(name, **cfg.shape(), state_dim=spec.state_dim, action_dim=spec.action_dim,
                     views=spec.image_shape[0], image_size=cfg.image_size)


@pytest.fixture
def toy_family():
    mod = __name__
    fam = registry.register_family(registry.Family("toy", f"{mod}:ToyConfig", f"{mod}:build_toy", f"{mod}:load_toy",
                                                   f"{mod}:fresh_toy"))
    yield fam
    registry.POLICIES.pop("toy")


def test_a_toy_family_trains_saves_loads_and_evaluates(tmp_path, toy_family):
    from vlaforge.pipeline import EvalArgs, run_eval
    from vlaforge.train.loop import TrainConfig, train

    cfg = TrainConfig(algo="rloo", policy="toy", suite="pointreach", tasks="train", iterations=1, groups=2, num_envs=4,
                      max_steps=8, image_size=32, eval_every=0, progress=False, tensorboard=False, threads=1,
                      out=str(tmp_path / "run"))
    cfg.rloo.group_size = 2
    train(cfg)
    p = load_policy(tmp_path / "run" / "final")
    assert type(p) is ToyVLA
    results, _ = run_eval(EvalArgs(checkpoint=str(tmp_path / "run" / "final"), suite="pointreach", tasks="train",
                                   episodes=2, num_envs=2, threads=1), quiet=True)
    assert sum(r.episodes for r in results) > 0
    save_policy(build_policy("toy", state_dim=2, action_dim=2), tmp_path / "fresh")
    assert type(load_policy(tmp_path / "fresh")) is ToyVLA


def test_unknown_family_names_the_registered_ones():
    with pytest.raises(ValueError, match="available: tiny, hf, smolvla, pi0, openvla, openvla-oft"):
        build_policy("pi-zero")
