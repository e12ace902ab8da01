"""``TrainConfig``: every option of ``vlaforge train`` (tyro-parsed), and its JSON round trip.

The run's fields, one ``--<algo>.*`` sub-config per registered algorithm (``vlaforge.algos.ALGOS``, so a new
algorithm adds no line here), the policy-family options (``--policy.*`` = ``HFConfig``, ``--openvla.*``), Ray
(``--ray.*``) and the recipes' options. ``config_to_dict`` / ``config_from_dict`` are what a checkpoint's
``state.json`` stores and what ``--resume`` rebuilds (``train.checkpoint.read_train_state`` checks the JSON
against these dataclasses first). ``TrainConfig.check()`` checks a fresh run's config (each part through its own
``check``: ``EnvOptions``, the algorithm's registry entry, ``HFConfig``, ``PolicyShape``, ``RayConfig``, the family's
``check_fresh``); ``check_numbers()`` is the part a resumed checkpoint's saved config must pass too. Kept apart from
``train.loop`` so that checkpoints can read a config without importing the loop.

    python -c "from vlaforge.train.config import TrainConfig; print(TrainConfig().algo)"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

from vlaforge.algos import ALGOS, AlgoName, get_algo
from vlaforge.checks import at_least, check_image_size, check_seed, learning_rate, need, positive, task_list
from vlaforge.device import DeviceOptions
from vlaforge.envs.options import EnvOptions
from vlaforge.policies.hf.model import HFConfig
from vlaforge.policies.openvla.model import OpenVLAOptions
from vlaforge.policies.options import PolicyShape
from vlaforge.policies.registry import PolicyName, family
from vlaforge.train.backend import RayConfig
from vlaforge.train.logging import LogOptions
from vlaforge.train.recipe_configs import GrapeConfig, IReVLAConfig, VLARLConfig


@dataclass
class _TrainFields(EnvOptions, PolicyShape, DeviceOptions, LogOptions):
    """RL post-training of a VLA on a simulator suite."""

    algo: AlgoName = "rloo"
    """algorithm (vlaforge.algos.ALGOS)"""
    recipe: str | None = None
    """named method (ire-vla | grape | ript-vla | vla-rl | simplevla-rl): presets this config and adds the
    method's own parts; flags given on the command line override the preset"""
    eval_tasks: str | None = None
    """tasks to evaluate on, among the training envs' (names, or a benchmark name such as MT10; default: the
    training tasks; PointReach also reports 'heldout')"""
    init: str | None = None
    """policy checkpoint to start from (e.g. the output of `vlaforge sft`); None = fresh tiny VLA"""
    critic: Literal["image", "privileged"] = "image"
    """PPO's value function: image (reads the actor's features) or privileged (an asymmetric critic on the
    suite's sim_state + proprio, built fresh when the policy has none; the actor still reads pixels only;
    tiny policies)"""
    policy: PolicyName = "tiny"
    """fresh policy: the tiny VLA, a local Hugging Face VLM (`--policy hf --policy.path DIR`, docs/hf.md), or a
    LeRobot SmolVLA or π0 checkpoint (`--policy smolvla|pi0 --policy.path DIR`, docs/vlas.md)"""
    hf: Annotated[HFConfig, tyro.conf.arg(name="policy")] = field(default_factory=HFConfig)
    """Hugging Face VLM and its memory switches (`--policy.*`, used with `--policy hf`)"""
    openvla: OpenVLAOptions = field(default_factory=OpenVLAOptions)
    """OpenVLA / OpenVLA-OFT options (`--openvla.*`, used with `--policy openvla|openvla-oft`)"""
    out: str = "runs/train"
    """run directory (TensorBoard, metrics.jsonl, checkpoint/, final/)"""
    resume: str | None = None
    """resume from this checkpoint directory (everything else comes from the checkpoint)"""
    resume_iterations: int = 0
    """with --resume: extend the run to this many iterations, finished or not (0: the checkpoint's own
    --iterations). Nothing in the loop depends on the total but the range it runs and its last iteration's
    checkpoint and evaluation, so 20 iterations extended to 40 equal a 40-iteration run"""
    iterations: int = 20
    """collect/update iterations"""
    groups: int = 8
    """initial states (contexts) per iteration; each is rolled out group_size times"""
    num_envs: int = 16
    """envs stepped in parallel"""
    image_size: int = 64
    """rendered image size"""
    max_steps: int | None = None
    """simulator steps per episode (None = the suite's default)"""
    lr: float = 3e-5
    """policy learning rate (the value head's is --value-lr); docs/benchmarks.md lists the rates its runs used"""
    lr_warmup: int = 0
    """ramp the policy learning rate linearly over the first N iterations (lr * (it + 1) / N; critic
    warm-up iterations count), so that the first Adam steps, each ~lr per parameter whatever the
    gradient's size, are small; 0 = off"""
    value_lr: float = 1e-3
    """value-head learning rate"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    freeze_backbone: bool = False
    """train only the action and value heads (iRe-VLA's RL stage)"""
    curriculum: Literal["uniform", "near50", "hard_first", "need"] = "uniform"
    """task sampling: uniform, or by recent success rate (near50, hard_first: VLA-RL; need: in proportion to
    1 - success with a floor, multi-task distillation's "tasks scheduled by need")"""
    curriculum_tau: float = 0.2
    """curriculum temperature"""
    curriculum_floor: float = 0.1
    """--curriculum need: the least weight of a task before normalising (a solved task is still rolled out)"""
    dynamic_rejection: bool = False
    """discard groups whose rewards are all equal and resample until the batch is full (RIPT-VLA)"""
    fill_fraction: float = 0.8
    """with dynamic rejection: stop collecting once this share of `groups` informative groups is kept"""
    max_collect_rounds: int = 4
    """with dynamic rejection: at most this many collection rounds per iteration"""
    eval_every: int = 5
    """evaluate every this many iterations (and at the start and the end)"""
    eval_episodes: int = 20
    """evaluation episodes per task (fixed seeds, disjoint from training)"""
    checkpoint_every: int = 1
    """write the full-state checkpoint every this many iterations"""
    seed: int = 0
    """seed of every RNG"""
    threads: int | None = None
    """torch CPU threads (default: the cores the env workers leave, ``envs.vector.thread_plan``; resolved once
    when a run starts and saved with it, so a resumed run uses the same count)"""
    pipeline: bool = False
    """act for one env-worker group while the others simulate (``rollout.collect``); the same Rollout as
    without it; overlaps only with ``--workers >= 2``"""
    tensorboard: bool = True
    """write TensorBoard scalars"""
    progress: bool = True
    """show a progress bar"""
    ray: RayConfig = field(default_factory=RayConfig)
    """scale-out on a Ray cluster (`--ray`, see docs/distributed.md); never taken from a checkpoint"""
    ire_vla: IReVLAConfig = field(default_factory=IReVLAConfig)
    grape: GrapeConfig = field(default_factory=GrapeConfig)
    vla_rl: VLARLConfig = field(default_factory=VLARLConfig)

    def check_numbers(self) -> None:
        """The checks that read no file: numbers, choices, env options (cast in place), the algorithm's config
        (its registry entry's ``check``), ``--policy.*`` and a fresh policy's shape. Run on a fresh config and, on
        ``--resume``, on the checkpoint's saved one (state.json is input too)."""
        if self.threads is not None:
            at_least("--threads", self.threads, 1)
        task_list("--eval-tasks", self.eval_tasks)
        at_least("--iterations", self.iterations, 1)
        at_least("--resume-iterations", self.resume_iterations, 0, " (0: the checkpoint's own --iterations)")
        at_least("--groups", self.groups, 1, " (initial states per iteration)")
        check_image_size("--image-size", self.image_size)
        if self.max_steps is not None:
            at_least("--max-steps", self.max_steps, 1)
        EnvOptions.check(self, self.max_steps)
        learning_rate("--lr", self.lr)
        at_least("--lr-warmup", self.lr_warmup, 0, " iterations")
        learning_rate("--value-lr", self.value_lr)
        at_least("--weight-decay", self.weight_decay, 0)
        positive("--curriculum-tau", self.curriculum_tau)
        need(0 < self.curriculum_floor <= 1, f"--curriculum-floor must be in (0, 1]; got {self.curriculum_floor}")
        need(0 < self.fill_fraction <= 1, f"--fill-fraction must be in (0, 1]; got {self.fill_fraction}")
        at_least("--max-collect-rounds", self.max_collect_rounds, 1)
        at_least("--eval-every", self.eval_every, 0, " (0 = no evaluation)")
        at_least("--eval-episodes", self.eval_episodes, 1)
        at_least("--checkpoint-every", self.checkpoint_every, 1, " iterations")
        check_seed("--seed", self.seed)
        get_algo(self.algo).check(self.algo_cfg)
        self.hf.check()
        if not self.init:
            PolicyShape.check(self)

    def check(self) -> None:
        """Every check of a fresh run's config that needs no checkpoint: ``check_numbers``, ``--ray.*`` and, without
        ``--init``, the policy family's own (``check_fresh``: the tiny VLA's image size, an HF model folder).
        ``train()`` runs it before any work; the CLI before it takes the run folder's lock (then also the checks
        that read --init, the recipe's and the run folder's: ``vlaforge.validate``)."""
        self.check_numbers()
        need(not self.resume_iterations or self.resume, "--resume-iterations extends a resumed run; pass it with "
                                                        "--resume CK, or set --iterations for a new run")
        self.ray.check()
        fam = family(self.policy)
        if not self.init:
            need(self.log_std_init is None or "log_std_init" in fam.caps,
                 f"--log-std-init shapes a fresh tiny VLA; --policy {self.policy} has its own --policy.* options: "
                 "drop --log-std-init")
            if fam.check_fresh:
                fam.fn("check_fresh")(self)


def _algo_cfg(self):
    """The chosen algorithm's sub-config (``cfg.ppo`` for ``algo == "ppo"``)."""
    return getattr(self, self.algo)


# TrainConfig = the fields above + one ``--<name>.*`` sub-config per registered algorithm (``ALGOS``), so a
# new algorithm adds no line here.
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(name, a.config, field(default_factory=a.config)) for name, a in ALGOS.items()],
    bases=(_TrainFields,), namespace={"__doc__": _TrainFields.__doc__, "__module__": __name__,
                                       "algo_cfg": property(_algo_cfg)})


CALLER_FIELDS = ("ray", "out", "resume", "resume_iterations", "progress", "tensorboard", "log", "device",
                 "deterministic")
"""What a resumed run takes from the command line that resumes it, not from its checkpoint: where to run (Ray,
the device), where to write and what to show. Everything else (the algorithm, its rates, ``precision``...) is the
run's own."""


def resume_config(saved, caller):
    """The config a resumed run runs with: ``saved`` (the checkpoint's) with ``caller``'s ``CALLER_FIELDS`` and its
    ``--policy.trust-remote-code`` (never read from a file); ``--resume-iterations N`` (> 0) makes ``iterations``
    N (``train.resume.resume_point`` checks N against the iterations done)."""
    cfg = dataclasses.replace(saved, **{k: getattr(caller, k) for k in CALLER_FIELDS},
                              hf=dataclasses.replace(saved.hf, trust_remote_code=caller.hf.trust_remote_code))
    return dataclasses.replace(cfg, iterations=caller.resume_iterations) if caller.resume_iterations else cfg


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> TrainConfig:
    sub = {name: a.config for name, a in ALGOS.items()}
    sub.update({"ire_vla": IReVLAConfig, "grape": GrapeConfig, "vla_rl": VLARLConfig})
    sub["ray"] = RayConfig
    sub["hf"] = HFConfig
    sub["openvla"] = OpenVLAOptions
    kw = dict(d)
    for k, cls in sub.items():
        if k in kw:
            v = dict(kw[k])
            if "keep_band" in v and v["keep_band"] is not None:
                v["keep_band"] = tuple(v["keep_band"])
            kw[k] = cls(**v)
    return TrainConfig(**kw)
