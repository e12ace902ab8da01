"""Privileged-teacher distillation by DAgger: the pixel policy acts, a teacher that reads the simulator's
state labels every frame it visited, and the pixel policy is fitted to those labels.

This is how a vision policy learns *where things are* from many more layouts than ≤ 10 demos show: the
teacher (a small state-backbone policy, typically trained by RL with the suite's privileged state — the
object and goal positions — in its observation, e.g. ``vlaforge train --backbone state --env-kwargs
privileged 1 render 0``) is right on every layout, and DAgger (Ross, Gordon & Bagnell 2011) labels the
states the *student* reaches, so its own mistakes are corrected ("learning by cheating", Chen et al. 2019;
the privileged-teacher step of RMA and of many sim-to-real pipelines). The student never reads the
privileged state: only the labels come from it, at training time, as with the asymmetric critic.

Per iteration: the loop rolls the student out (its own actions, at the sampling temperature); ``prepare``
keeps every executed decision frame; ``update`` asks each frame's own task's teacher (frames carry their task
id; one teacher may serve every task) for its deterministic action chunk (from the sim_state fields the teacher
reads, named by ``--distill.teacher-state`` or recorded in its checkpoint), drops the frames of tasks without a
teacher (logged once per task), adds (frame, label) to a bounded aggregate buffer (the
algorithm's state, checkpointed), and takes ``steps`` behaviour-cloning steps on batches drawn from the
whole aggregate with the policy's own ``sft_loss`` (for a student SFT'd with ``--aux``, that loss includes its
perception readout's, fitted to the frames' recorded object/goal positions: labels for localisation on every
layout the student visits). Differences from the papers: no β-mixing of teacher
actions into the rollouts (the loop's collector runs the student only; β = 0 from the first iteration,
which works when the student starts from SFT on demos); the loop's learning rate applies (DAgger's
supervised steps want an SFT-like rate, e.g. ``--lr 3e-4``, not RL's 1e-4).

Multi-task distillation (RLDG / MT-DAgger style) is the same update with one teacher per task; with
``--distill.teachers-cache DIR`` the CLI (``pipeline.distill_teachers``) builds each missing teacher there first,
reuses the ones built before, skips tasks whose teacher does worse than the student, and ``--curriculum need``
rolls tasks out in proportion to (1 - the student's recent success), with a floor:

    vlaforge train --algo distill --suite metaworld --tasks reach-v3 --init runs/sft --lr 3e-4 \
        --distill.teacher runs/teacher/final --distill.teacher-state privileged
    vlaforge train --algo distill --suite metaworld --tasks MT10 --init runs/generalist/N25_S2000/sft --lr 3e-4 \
        --distill.teachers-cache runs/teachers --curriculum need
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlaforge.algos.common import LOCAL, StepBatch, flatten_steps, gradient_step, replay_updates
from vlaforge.algos.state import AlgoState, flatten, unflatten
from vlaforge.checks import need
from vlaforge.data.replay import ReplayBuffer
from vlaforge.device import module_device, to_device
from vlaforge.errors import UsageError
from vlaforge.hooks import Hooks
from vlaforge.types import Observation, Rollout


@dataclass
class DistillConfig:
    teacher: str = ""
    """the teacher(s): one policy checkpoint for every task (``DIR``), one per task (``reach-v3=DIR,push-v3=DIR``),
    or a folder holding one teacher per task name (``DIR/reach-v3/config.json`` ...); each frame is labelled by its
    own task's teacher, frames of a task without one are not kept (a logged line). With ``--distill.teachers-cache``
    the teachers are built or reused there and this stays empty"""
    teacher_state: str = ""
    """the sim_state fields the teacher reads, in its order: names (``ee_x,ee_y,ee_z,gripper,obj_x,...``) or a named
    group of the suite (Meta-World: ``privileged`` = ee xyz, gripper, object 0, object 1, goal); empty: the fields the
    teacher's checkpoint records (``state_fields``, written by ``pipeline.privileged_teacher``). Comma-separated
    sim_state indices (``0,1,2,3,4,5,6,11,12,13,36,37,38``) are still read, for older configs and checkpoints"""
    teachers_cache: str = ""
    """build each training task's privileged teacher here (``pipeline.privileged_teacher``: demos -> SFT -> PPO on
    the privileged state, no rendering) or reuse the one built before, keyed by (suite, task, teacher seed, demos,
    SFT steps, iterations, episode length, --env-kwargs); a teacher that does worse than the student on the
    evaluation seeds is skipped (a logged line)"""
    teacher_demos: int = 50
    """with --distill.teachers-cache: scripted-expert episodes each teacher is SFT'd on before PPO (0: PPO from
    scratch; docs/benchmarks.md: MT10 teachers from 10 demos averaged 84%, from 50 with 4000 SFT steps 98.8%)"""
    teacher_sft_steps: int = 4000
    """with --distill.teachers-cache and --distill.teacher-demos > 0: SFT steps on the teacher's demos before PPO
    (docs/benchmarks.md, "Teachers that fit their demos": 1000 underfit 50 demos, push 2/50 and pick-place 41/50
    where 4000 give 50 and 49, SFT alone on the same seeds)"""
    teacher_iterations: int = 64
    """with --distill.teachers-cache: each teacher's PPO iterations (0: the SFT policy is the teacher; needs
    --distill.teacher-demos)"""
    teacher_seed: int = 0
    """with --distill.teachers-cache: each teacher's seed (its demo layouts are the pixel demos' with the same seed)"""
    steps: int = 300
    """behaviour-cloning steps per iteration on the aggregate (reach-v3 from pixels, docs/benchmarks.md: 100 gained at one
    training seed of three, 300 at two of three; 300 is the setting measured on five tasks)"""
    batch_size: int = 64
    """frames per step"""
    capacity: int = 10_000
    """frames kept in the aggregate (oldest dropped); 64x64 RGB frames take ~12.3 kB each (docs/benchmarks.md: on MT10
    from pixels, 40,000, which kept all 40 DAgger iterations' ~20k frames, gave 72.1% against 70.8% at 10,000, three
    seeds, intervals overlapping)"""
    grad_clip: float = 1.0
    """max gradient norm"""
    group_size: int = 1
    """rollouts per initial state (1: every episode its own layout)"""
    temperature: float = 1.0
    """student sampling temperature during rollouts"""


ALL_TASKS = "*"
"""the key of a teacher that labels every task (``--distill.teacher DIR``)"""


def state_fields(text: str, names: tuple[str, ...], groups: dict[str, tuple[str, ...]] | None = None,
                 flag: str = "--distill.teacher-state") -> tuple[str, ...]:
    """The sim_state field names ``text`` gives, in order: comma-separated names, named groups (expanded in place)
    or, the older form, sim_state indices; ``names`` = ``EnvSpec.sim_state_names``, ``groups`` =
    ``EnvSpec.sim_state_groups``. A name the suite lacks is a one-line ``UsageError`` listing the valid ones."""
    groups = groups or {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"{flag} is empty: name the sim_state fields the teacher reads")
    if not names:
        raise UsageError(f"{flag}: this suite has no sim_state channel, so no teacher can read one")
    out: list[str] = []
    if all(p.lstrip("-").isdigit() for p in parts):  # the index form of older configs
        bad = [p for p in parts if not 0 <= int(p) < len(names)]
        if bad:
            raise UsageError(f"{flag}: index {bad[0]} is outside the suite's {len(names)} sim_state entries (0.."
                             f"{len(names) - 1}); name the fields instead ({', '.join(names)})")
        return tuple(names[int(p)] for p in parts)
    for p in parts:
        if p in groups:
            out += groups[p]
        elif p in names:
            out.append(p)
        else:
            known = ", ".join([*(f"{g} (group)" for g in groups), *names])
            raise UsageError(f"{flag}: unknown sim_state field '{p}'; valid: {known}")
    return tuple(out)


def teacher_paths(text: str) -> dict[str, str]:
    """``--distill.teacher`` as {task name or ``ALL_TASKS``: policy directory}: ``DIR`` (a policy: every task; a
    folder of policies: one per task, named by its subfolders), or ``task=DIR,task=DIR``."""
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        d = Path(text)
        if (d / "config.json").is_file() or not d.is_dir():
            return {ALL_TASKS: text}
        found = {c.name: str(c) for c in sorted(d.iterdir()) if (c / "config.json").is_file()}
        if not found:
            raise UsageError(f"--distill.teacher '{text}' is neither a policy (no config.json) nor a folder of "
                             "per-task teachers (no subfolder holds one)")
        return found
    out: dict[str, str] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        task, sep, path = part.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise UsageError(f"--distill.teacher: '{part}' is not TASK=DIR (e.g. reach-v3=runs/t/reach/final)")
        if task.strip() in out:
            raise UsageError(f"--distill.teacher names task '{task.strip()}' twice")
        out[task.strip()] = path.strip()
    return out


def teacher_fields(cfg: DistillConfig, teacher_meta: dict, path: str, names, groups) -> tuple[str, ...]:
    """The sim_state fields one teacher reads: ``--distill.teacher-state`` if given, else what its checkpoint
    records; a count that differs from the teacher's state input is a one-line ``UsageError``."""
    source = "--distill.teacher-state"
    if cfg.teacher_state.strip():
        fields = state_fields(cfg.teacher_state, names, groups)
    elif teacher_meta.get("state_fields"):
        source = f"the teacher's recorded state_fields ({path}/config.json)"
        fields = state_fields(",".join(map(str, teacher_meta["state_fields"])), names, groups, source)
    else:
        raise UsageError(f"the teacher '{path}' does not record which sim_state fields it reads; pass "
                         "--distill.teacher-state (e.g. privileged, or ee_x,ee_y,...)")
    dim = teacher_meta["policy"].get("state_dim")
    if dim != len(fields):
        raise UsageError(f"{source} names {len(fields)} sim_state fields ({','.join(fields)}) but the teacher "
                         f"'{path}' reads {dim} state dims")
    return fields


def check_teachers(cfg: DistillConfig, spec, tasks: list[str], read=None) -> None:
    """The input checks of ``--distill.teacher`` / ``--distill.teacher-state`` for a run on ``tasks`` of ``spec``'s
    suite (validate.py calls it before any env is built): every named task is a task of the run, every teacher a
    policy whose state input is as long as its fields. A training task without a teacher is allowed (its frames
    are skipped, logged). ``read``: how a teacher's config.json is read (default ``policies.read_config``;
    validate.py's also refuses one that asks to run code)."""
    from vlaforge.policies import read_config

    read = read or read_config
    paths = teacher_paths(cfg.teacher)
    if not paths:
        raise UsageError("--distill.teacher is required (or --distill.teachers-cache DIR): the privileged teacher(s)")
    stray = [t for t in paths if t != ALL_TASKS and t not in tasks]
    if stray:
        raise UsageError(f"--distill.teacher names task '{stray[0]}', which this run does not train on; its tasks: "
                         f"{', '.join(tasks)}")
    for path in paths.values():
        teacher_fields(cfg, read(path), path, spec.sim_state_names, spec.sim_state_groups)


def check_teacher(teacher: dict, student: dict, name: str = "the teacher") -> None:
    """Refuse (``UsageError``, one line) to distil a teacher whose success rate is below the student's, both
    ``{"successes", "episodes"}`` on the same evaluation seeds: DAgger would pull the student toward a policy that
    does worse than it already does (a PPO teacher that collapsed from its SFT start, e.g.)."""
    rate = lambda c: c["successes"] / max(c["episodes"], 1)  # noqa: E731
    if rate(teacher) < rate(student):
        raise UsageError(f"{name} succeeds in {teacher['successes']}/{teacher['episodes']} evaluation episodes, fewer "
                         f"than the student it would teach ({student['successes']}/{student['episodes']} on the same "
                         "seeds): not distilling a worse teacher; train it longer or start it from demos")


def check_run(cfg, init: dict | None) -> None:
    """The registry's ``check_run`` (``vlaforge train --algo distill``, before any work): the aggregate's sizes (steps,
    batch size, capacity >= 1); the teachers and their sim_state fields (``check_teachers``), or the teacher cache's
    options; the fields resolved against the suite's names. ``cfg``: the TrainConfig; ``init``: unused."""
    from vlaforge.checks import at_least, check_seed
    from vlaforge.envs import env_kwargs, env_tasks, suite_info, suite_spec, suite_task_names
    from vlaforge.paths import check_out_dir
    from vlaforge.policies import read_checked_config

    d = cfg.algo_cfg
    for flag, v in (("steps", d.steps), ("batch-size", d.batch_size), ("capacity", d.capacity)):
        at_least(f"--distill.{flag}", v, 1)
    spec = suite_spec(cfg.suite, env_tasks(cfg.suite, cfg.tasks), image_size=cfg.image_size,
                      **env_kwargs(cfg.env_kwargs, cfg.max_steps))
    if d.teacher_state.strip():
        state_fields(d.teacher_state, spec.sim_state_names, spec.sim_state_groups)
    if not d.teachers_cache:
        tasks = suite_task_names(spec, cfg.tasks if suite_info(cfg.suite).holds_all_tasks else None)
        check_teachers(d, spec, tasks, lambda p: read_checked_config(p, False, "--distill.teacher", None))
        return
    need(not d.teacher, "--distill.teacher and --distill.teachers-cache are exclusive: give the teachers or the "
                        "cache that builds them")
    need("privileged" in spec.sim_state_groups, f"--distill.teachers-cache builds privileged teachers for suites "
                                                f"with a named privileged state (metaworld); '{cfg.suite}' has none")
    check_out_dir("--distill.teachers-cache", d.teachers_cache)
    at_least("--distill.teacher-demos", d.teacher_demos, 0, " (0: PPO from scratch)")
    at_least("--distill.teacher-iterations", d.teacher_iterations, 0, " (0: the SFT policy is the teacher)")
    at_least("--distill.teacher-sft-steps", d.teacher_sft_steps, 1)
    need(d.teacher_iterations or d.teacher_demos, "--distill.teacher-iterations 0 keeps the SFT policy as the teacher, "
                                                  "so it needs demos: set --distill.teacher-demos N")
    check_seed("--distill.teacher-seed", d.teacher_seed)


class DistillState(AlgoState):
    """The teachers (reloaded from their checkpoints, never saved here), each with the sim_state indices it reads,
    by task id; and the aggregate of labelled frames."""

    def __init__(self, policy, cfg: DistillConfig, spec=None):
        from vlaforge.policies import load_policy, read_config

        paths = teacher_paths(cfg.teacher)
        if not paths:
            raise ValueError("--distill.teacher is required: a policy checkpoint that reads the privileged state")
        index_form = all(p.strip().isdigit() for p in cfg.teacher_state.split(",") if p.strip())
        if spec is None and (set(paths) != {ALL_TASKS} or not cfg.teacher_state.strip() or not index_form):
            raise ValueError("per-task teachers and named fields need the suite's EnvSpec: init_state(policy, cfg, spec)")
        self.device = module_device(policy)
        names = spec.sim_state_names if spec is not None else ()
        loaded: dict[str, tuple] = {}  # path -> (teacher, index): a teacher shared by tasks is loaded once
        for path in dict.fromkeys(paths.values()):
            if spec is None:  # the index form without a suite: indices taken as they are
                index = [int(x) for x in cfg.teacher_state.split(",") if x.strip()]
            else:
                fields = teacher_fields(cfg, read_config(path), path, names, spec.sim_state_groups)
                index = [names.index(f) for f in fields]
            teacher = load_policy(path).to(self.device).eval()
            if teacher.cfg.state_dim != len(index):
                raise ValueError(f"the teacher '{path}' reads {teacher.cfg.state_dim} state dims but "
                                 f"--distill.teacher-state names {len(index)}")
            if teacher.chunk_size < policy.chunk_size or teacher.cfg.action_dim != policy.action_dim:
                raise ValueError(f"the teacher '{path}' acts in chunks of {teacher.chunk_size}x"
                                 f"{teacher.cfg.action_dim}; the student needs at least {policy.chunk_size}x"
                                 f"{policy.action_dim}")
            loaded[path] = (teacher, torch.tensor(index, dtype=torch.long, device=self.device))
        task_names = [t.name for t in spec.tasks] if spec is not None else []
        self.shared = loaded[paths[ALL_TASKS]] if ALL_TASKS in paths else None
        unknown = [t for t in paths if t != ALL_TASKS and t not in task_names]
        if unknown:
            raise UsageError(f"--distill.teacher names task '{unknown[0]}', which this run's suite does not hold; its "
                             f"tasks: {', '.join(task_names)}")
        self.by_task = {task_names.index(t): loaded[p] for t, p in paths.items() if t != ALL_TASKS}
        self.task_names = task_names
        self.unlabelled: set[int] = set()  # tasks whose frames were skipped (logged once each)
        self.frames = ReplayBuffer(cfg.capacity)
        self.instructions: dict[int, str] = {}  # task id -> instruction (strings stay out of the tensors)

    def teacher_for(self, task_id: int):
        """(teacher, sim_state index) of a task, or None when it has no teacher."""
        return self.by_task.get(task_id, self.shared)

    @torch.no_grad()
    def label(self, batch: StepBatch, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's own task's teacher's deterministic env-space action chunk: (labels (B, C, A), labelled (B,)
        bool); frames of a task without a teacher are not labelled (zeros, ``labelled`` False)."""
        if batch.sim_state is None:
            raise ValueError("distillation needs the suite's sim_state in the rollouts (this suite has none)")
        B, A = len(batch.task_ids), batch.actions.shape[-1]
        labels = torch.zeros((B, chunk, A), dtype=batch.actions.dtype, device=batch.actions.device)
        labelled = torch.zeros(B, dtype=torch.bool, device=batch.task_ids.device)
        for t in torch.unique(batch.task_ids).tolist():
            got = self.teacher_for(int(t))
            if got is None:
                if t not in self.unlabelled:
                    self.unlabelled.add(t)
                    name = self.task_names[t] if t < len(self.task_names) else t
                    print(f"distill: task {name} has no teacher; its frames are not labelled", flush=True)
                continue
            teacher, index = got
            rows = torch.nonzero(batch.task_ids == t).flatten()
            s = batch.sim_state[rows][:, index]
            blank = torch.zeros((len(s), 1, 1, 1, 3), dtype=torch.uint8, device=s.device)  # a state backbone ignores images
            obs = Observation(blank, s, [batch.instructions[i] for i in rows.tolist()], batch.task_ids[rows])  # one sync
            labels[rows] = teacher.act(obs, deterministic=True).actions[:, :chunk].to(labels.dtype)
            labelled[rows] = True
        return labels, labelled

    def state_dict(self):
        return flatten({"frames": self.frames.state_dict(),
                        "instructions": {str(k): v for k, v in self.instructions.items()}})

    def load_state_dict(self, tensors, meta) -> None:
        d = unflatten(tensors, meta)
        self.frames.load_state_dict(d["frames"])
        self.instructions = {int(k): v for k, v in d["instructions"].items()}


def init_state(policy, cfg: DistillConfig, spec=None) -> DistillState:
    return DistillState(policy, cfg, spec)


def prepare(rollout: Rollout, cfg: DistillConfig, hooks: Hooks) -> tuple[StepBatch, dict]:
    """Every executed decision frame of valid episodes (advantages unused: zeros)."""
    keep = rollout.alive & rollout.valid.unsqueeze(0)
    return flatten_steps(rollout, keep, torch.zeros_like(rollout.reward)), {}


def update(policy, optimizer, batch: StepBatch, cfg: DistillConfig, iteration: int, gen=None, sync=LOCAL,
           state: DistillState | None = None) -> dict:
    labels, labelled = state.label(batch, policy.chunk_size)
    keep = torch.nonzero(labelled).flatten()  # frames of a task without a teacher are not kept
    batch, labels = batch.index(keep), labels[keep]
    # how far the student's own (sampled) chunks were from the teachers' at the frames it visited
    gap = (batch.actions - labels).abs().mean() if len(keep) else batch.actions.new_zeros(())
    for t, instr in zip(batch.task_ids.tolist(), batch.instructions):
        state.instructions.setdefault(int(t), instr)
    if len(keep):
        state.frames.add({"images": batch.images, "state": batch.state, "task_ids": batch.task_ids, "labels": labels,
                          "sim_state": batch.sim_state})
    if not len(state.frames):
        return {"train/aggregate_frames": 0, "train/new_frames": 0, "train/unlabelled_frames": len(labelled)}
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]

    def step(i: int, mb: dict) -> dict | None:
        # sim_state rides along as a *target* only: a student SFT'd with a perception readout (`vlaforge sft --aux`)
        # keeps fitting it on every frame here (policies' sft_loss adds it), never as an input
        obs = Observation(mb["images"], mb["state"], [state.instructions[int(t)] for t in mb["task_ids"]],
                          mb["task_ids"], mb["sim_state"])
        loss, m = policy.sft_loss(obs, mb["labels"])
        gn = gradient_step(loss, params, optimizer, cfg.grad_clip, sync)
        return None if gn is None else {**m, "loss": loss.detach(), "grad_norm": gn}

    out = replay_updates(cfg.steps, lambda: to_device(state.frames.sample(cfg.batch_size, gen), state.device), step)
    out.update({"train/teacher_gap": float(gap), "train/aggregate_frames": len(state.frames),
                "train/new_frames": len(batch), "train/unlabelled_frames": int(len(labelled) - len(keep))})
    return out
