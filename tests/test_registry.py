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
    from vlaforge.schema import CONFIG_CHECKS, CONFIG_SCHEMAS, IGNORED_CONFIG_FIELDS

    registry.POLICIES.pop("toy")  # and its checkpoint schema: later tests see the registry as it was
    for table in (CONFIG_SCHEMAS, IGNORED_CONFIG_FIELDS, CONFIG_CHECKS):
        table.pop("toy", None)


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


# -- a toy algorithm: its file is this module, its registry line the fixture's register_algo ----------------------

@dataclass
class ToyPGConfig:
    """REINFORCE with the batch's mean return as baseline; one gradient step per iteration."""

    group_size: int = 1
    """rollouts per initial state"""
    temperature: float = 1.0
    """sampling temperature (scoring uses the same)"""
    grad_clip: float = 1.0
    """max gradient norm"""
    baseline: str = "mean"
    """mean (the batch's mean return) or none"""


def check_toy(cfg: ToyPGConfig) -> None:
    from vlaforge.checks import need

    need(cfg.baseline in ("mean", "none"), f"--toy.baseline '{cfg.baseline}' is unknown; choose mean or none")


def prepare_toy(rollout, cfg: ToyPGConfig, hooks):
    from vlaforge.algos.common import episode_batch, trajectory_reward

    r = trajectory_reward(rollout)  # (N,)
    adv = r - r[rollout.valid].mean() if cfg.baseline == "mean" else r
    return episode_batch(rollout, rollout.valid, adv)


def update_toy(policy, optimizer, batch, cfg: ToyPGConfig, iteration, gen=None, sync=None, state=None) -> dict:
    """loss = -mean over kept steps of adv * log pi(chunk); one clipped step."""
    from vlaforge.algos.common import LOCAL, gradient_step

    logp, _, _ = policy.evaluate(batch.obs(), batch.taken, temperature=cfg.temperature)  # (B, C, A)
    logp_chunk = (logp.sum(-1) * batch.chunk_mask).sum(-1)  # (B,)
    loss = -(batch.adv * logp_chunk).mean()
    params = [p for p in policy.parameters() if p.requires_grad]
    gn = gradient_step(loss, params, optimizer, cfg.grad_clip, sync or LOCAL)
    return {"train/loss": float(loss.detach()), "train/grad_norm": float(gn) if gn is not None else float("nan")}


@pytest.fixture
def toy_algo():
    from vlaforge.algos import ALGOS, Algo, register_algo

    yield register_algo(Algo("toy", ToyPGConfig, prepare_toy, update_toy, batch_fields=(), check_fn=check_toy))
    ALGOS.pop("toy")


def _toy_train_config(tmp_path, **kw):
    """``TrainConfig`` is built from the algorithms registered at import; a later one rides a subclass holding its
    config under its name (what ``TrainConfig`` gives every registered algorithm)."""
    import dataclasses

    from vlaforge.train.loop import TrainConfig

    cls = dataclasses.make_dataclass("ToyTrainConfig", [("toy", ToyPGConfig, dataclasses.field(default_factory=ToyPGConfig))],
                                     bases=(TrainConfig,))
    return cls(algo="toy", suite="pointreach", tasks="train", iterations=2, groups=2, num_envs=4, max_steps=8,
               image_size=32, backbone="state", eval_every=0, progress=False, tensorboard=False, threads=1,
               lr=1e-3, env_kwargs={"shaping": 1.0}, out=str(tmp_path / "run"), **kw)


def test_a_toy_algorithm_registered_here_trains_and_is_checked(tmp_path, toy_algo):
    import torch

    from vlaforge.errors import UsageError
    from vlaforge.policies import build_policy
    from vlaforge.train.loop import train

    bad = _toy_train_config(tmp_path)
    bad.toy.baseline = "median"
    with pytest.raises(UsageError, match="--toy.baseline 'median' is unknown"):  # its own check, through train()
        train(bad)
    bad.toy.baseline, bad.toy.temperature = "mean", 0.0
    with pytest.raises(UsageError, match="--toy.temperature must be > 0"):  # the generic field checks
        train(bad)
    assert not (tmp_path / "run").exists()

    torch.manual_seed(0)
    policy = build_policy(backbone="state", state_dim=2, action_dim=2, image_size=32)
    before = [p.detach().clone() for p in policy.parameters()]
    train(_toy_train_config(tmp_path), policy=policy)
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(policy.parameters(), before))
    assert moved > 0
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert '"algo": "toy"' in (tmp_path / "run" / "train_config.json").read_text()
