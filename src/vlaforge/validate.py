"""The CLI's checks of what a command reads and writes, before any env is stepped or any file is written.

``check(command, args, argv)`` validates the parsed options of ``vlaforge <command>`` and returns them, possibly
resolved (``train --resume``: the run's config, its folder the checkpoint's parent unless ``--out`` is given; env
options cast to the types their constructor declares). Each config checks its own fields where it is defined
(``TrainConfig.check``, the algorithm's registry entry, the recipe's module, ``EnvOptions.check``, the policy
family's ``check_fresh``, ``SFTArgs`` / ``EvalArgs`` / ``CollectArgs`` / ``DemoArgs.check``), and ``train()``,
``run_recipe``, ``run_sft``, ``run_eval``, ``run_collect`` and ``run_demo`` call the same checks, so Python callers
get the same one-line errors. What stays
here is what crosses files and commands: paths and output folders, the --init / --checkpoint / demos a command
reads against its options, ``--resume`` (decided in ``train.resume.resume_point``), a recipe's checks with the
flags named on the command line. Every failure raises ``UsageError`` (or ``EnvError`` / ``CheckpointError`` /
``MissingExtra``), which the CLI prints as one line with exit status 2.

Layering: this module sits above what it checks and imports it at module level; only ``vlaforge.cli`` imports
it. The names tests and callers know are re-exported here.

    python -c "from vlaforge.validate import check; ..."   # used by vlaforge.cli
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from vlaforge.algos import get_algo
from vlaforge.checks import flag, given_fields, need
from vlaforge.data.demo_files import check_demos
from vlaforge.device import DeviceOptions
from vlaforge.envs import env_kwargs, env_tasks, suite_spec
from vlaforge.errors import NonFiniteError, UsageError
from vlaforge.paths import (
    check_manifest_replaceable,
    check_out_dir,
    check_out_file,
    check_path,
    check_replaceable,
)
from vlaforge.policies import read_checked_config
from vlaforge.policies.options import PolicyShape
from vlaforge.policies.registry import family
from vlaforge.recipes import check_recipe
from vlaforge.runlock import check_target, refuse_if_live
from vlaforge.schema import CONFIG_SCHEMAS, FORMAT_VERSION, check_policy_config, register_config_schema
from vlaforge.train.logging import LogOptions
from vlaforge.train.resume import resume_point

__all__ = ["CONFIG_SCHEMAS", "FORMAT_VERSION", "NonFiniteError", "UsageError", "check", "check_policy_config",
           "register_config_schema"]

PATH_FLAGS = {"out": "--out", "checkpoint": "--checkpoint", "demos": "--demos", "init": "--init", "resume": "--resume",
              "hf.path": "--policy.path"}
"""path options every command's checks first pass through ``check_path``"""
TRUST_FLAG = {"eval": "--trust-remote-code", "sft": "--trust-remote-code", "train": "--policy.trust-remote-code"}
"""each command's flag that lets a checkpoint run its own code"""
SHAPE_FLAGS = tuple(f.name for f in dataclasses.fields(PolicyShape))
"""the fields of a fresh policy's shape (``--head``, ``--chunk-size``, ``--backbone``): refused with ``--init``"""


def check(command: str, args, argv: list[str]):
    """Validate ``args`` of ``vlaforge <command>`` (``argv``: the command's own arguments); returns them."""
    fn = {"collect": check_collect, "sft": check_sft, "eval": check_eval, "train": check_train,
          "demo": check_demo}.get(command)
    # each option group checks its own fields (each defines check(): called by class, not through the MRO)
    if isinstance(args, DeviceOptions):  # a device this machine lacks is refused before any work
        DeviceOptions.check(args)
    if isinstance(args, LogOptions):  # --log wandb without the wandb package
        LogOptions.check(args)
    for field, fl in PATH_FLAGS.items():  # symlink loops, names too long: one line before anything else
        v = args
        for p in field.split("."):
            v = getattr(v, p, None)
        if isinstance(v, (str, os.PathLike)) and str(v):
            check_path(fl, v, out=field == "out")
    return fn(args, argv) if fn is not None else args


def check_collect(a, argv):
    a.check()
    check_out_dir("--out", a.out)
    check_target("collect", a.out)
    check_replaceable("--out", a.out, "demos")
    refuse_if_live("collect", a.out, "--out")
    return a


def check_demo(a, argv):
    a.check()
    check_out_dir("--out", a.out)
    check_target("demo", a.out)
    check_replaceable("--out", Path(a.out) / "demos", "demos")
    for sub in ("sft", "rl/final", "rl/checkpoint"):
        check_replaceable("--out", Path(a.out) / sub, "policy")
    refuse_if_live("demo", a.out, "--out")
    return a


def check_sft(a, argv):
    given = given_fields(argv)
    a.check()
    info = check_demos(a.demos, demos_map=a.demos_map)
    render0 = info.get("renderer") == "none"
    if a.init:
        fresh_only = sorted(f for f in given if f in (*SHAPE_FLAGS, "aux"))
        need(not fresh_only, f"{flag(fresh_only[0]) if fresh_only else ''} shapes a fresh policy and is ignored with "
                             "--init (the checkpoint fixes it); drop it")
        pol = read_checked_config(a.init, a.trust_remote_code, "--init", TRUST_FLAG["sft"])["policy"]
        S, A = info["features"]["observation.state"]["shape"][0], info["features"]["action"]["shape"][0]
        need((pol.get("state_dim"), pol.get("action_dim")) == (S, A),
             f"--init policy expects state/action dims {pol.get('state_dim')}/{pol.get('action_dim')} but the demos "
             f"in '{a.demos}' have {S}/{A}; pass demos of the suite the policy was trained on")
        need(pol.get("image_size") in (None, info["image_size"]),
             f"--init policy reads {pol.get('image_size')}px images but the demos have {info['image_size']}px; "
             "collect demos with a matching --image-size")
        need(not (render0 and pol.get("backbone") != "state"),
             f"demos '{a.demos}' were recorded with render 0 (blank images) but the --init policy reads images; "
             "pass a state-backbone policy or record the demos with rendering")
    else:
        need(not a.aux or "observation.sim_state" in info.get("features", {}),
             f"--aux needs demos that recorded sim_state; '{a.demos}' did not: re-collect them with `vlaforge collect`")
        need(not (render0 and a.backbone != "state"),
             f"demos '{a.demos}' were recorded with render 0 (blank images) but a --backbone {a.backbone} policy reads "
             "images; use --backbone state or record the demos with rendering")
        need(a.backbone != "vision" or info["image_size"] % 8 == 0,
             f"the demos in '{a.demos}' have {info['image_size']}px images; the tiny VLA's vision backbone needs a "
             "multiple of 8: collect them with --image-size 64 (or use --backbone state)")
    check_out_dir("--out", a.out)
    check_target("sft", a.out, a.overwrite)
    check_replaceable("--out", a.out, "policy")
    refuse_if_live("sft", a.out, "--out")
    return a


def check_fits_suite(name: str, pol: dict, suite: str, tasks, image_size: int | None, env_kwargs: dict) -> None:
    """The policy config ``pol`` can act in the suite's envs (dims, images); builds one env to ask."""
    spec = suite_spec(suite, env_tasks(suite, tasks), image_size=image_size or pol.get("image_size", 64),
                      **env_kwargs)
    dims = (pol.get("state_dim"), pol.get("action_dim"))
    need(dims == (spec.state_dim, spec.action_dim),
         f"{name} policy expects state/action dims {dims[0]}/{dims[1]} but suite '{suite}' has "
         f"{spec.state_dim}/{spec.action_dim}; pass a checkpoint trained on this suite with the same --env-kwargs")
    need(not (spec.renderer == "none" and pol.get("backbone") != "state"),
         f"suite '{suite}' runs with render 0 (blank images) but the {name} policy reads images; "
         "use a state-backbone policy or drop render 0")
    need(pol.get("views", spec.image_shape[0]) == spec.image_shape[0],
         f"{name} policy reads {pol.get('views')} camera views but suite '{suite}' renders {spec.image_shape[0]}")


def check_eval(a, argv):
    a.check()
    pol = read_checked_config(a.checkpoint, a.trust_remote_code, "--checkpoint", TRUST_FLAG["eval"])["policy"]
    check_fits_suite("--checkpoint", pol, a.suite, a.tasks, pol.get("image_size"), a.env_kwargs)
    out = Path(a.out) if a.out else Path(a.checkpoint) / f"eval_{a.suite}.json"
    check_out_file("--out" if a.out else f"--out (default {out})", out)
    check_manifest_replaceable("--out" if a.out else f"--out (default {out})", out)
    return a


# train ---------------------------------------------------------------------------------------------

RUN_ENTRY_KINDS = {"metrics.jsonl": "file", "train_config.json": "file", "checkpoint": "folder", "final": "folder",
                   "tb": "folder"}
"""what ``vlaforge train`` writes in its run folder, and as what"""


def _train_given(argv) -> set[str]:
    g = given_fields(argv, {"policy": "hf"})
    if "hf" in g:  # `--policy hf` is the field `policy`; `--policy.X` is `hf.X`
        g.discard("hf")
        g.add("policy")
    return g


def check_train(cfg, argv):
    """Also resolves a resume: the run's config is the checkpoint's, its folder the checkpoint's parent unless --out
    is given (``train.resume.resume_point``)."""
    given = _train_given(argv)
    if cfg.resume:
        point = resume_point(cfg, frozenset(given), repair=True)
        cfg = dataclasses.replace(cfg, **{f.name: getattr(point.cfg, f.name) for f in dataclasses.fields(point.cfg)})
        own = Path(cfg.out).expanduser().resolve() == point.path.absolute().parent.resolve()
        need(not (own and getattr(cfg, "overwrite", False)), "--overwrite starts a new run; a resumed run continues "
                                                             "its own folder: drop --overwrite (or pass --out NEW_DIR)")
        check_train_out(cfg.out, getattr(cfg, "overwrite", False), fresh=not own)
        return cfg
    cfg.check()
    init = read_checked_config(cfg.init, cfg.hf.trust_remote_code, "--init", TRUST_FLAG["train"])["policy"] \
        if cfg.init else None
    check_with_init(cfg, given, init)
    if cfg.recipe:
        check_recipe(cfg, frozenset(given))
    check_train_out(cfg.out, getattr(cfg, "overwrite", False))
    return cfg


def check_with_init(cfg, given: set[str], init: dict | None) -> None:
    """A fresh run's options against its start (``init``: the --init policy's config, None for a fresh policy):
    the family's capabilities (--critic privileged, readouts), the algorithm's ``check_run`` (a teacher, LoRA), the
    flags --init makes moot, and that the --init policy fits the suite."""
    caps = family(init.get("family", "tiny") if init is not None else cfg.policy).caps
    tiny = "privileged_critic" in caps
    need(cfg.critic != "privileged" or tiny, "--critic privileged is available for the tiny VLA only; drop it")
    need(not getattr(cfg.algo_cfg, "readout_coef", 0.0) or (tiny and init is not None and bool(init.get("aux_index"))),
         f"--{cfg.algo}.readout-coef needs an --init policy with a perception readout (`vlaforge sft --aux`)")
    algo = get_algo(cfg.algo)
    if algo.check_run is not None:
        algo.check_run(cfg, init)
    if init is None:
        return
    fresh_only = sorted(f for f in given if f in (*SHAPE_FLAGS, "policy")
                        or (f.startswith("hf.") and f != "hf.trust_remote_code"))
    need(not fresh_only, f"{flag(fresh_only[0], {'policy': 'hf'}) if fresh_only else ''} shapes a fresh policy "
                         "and is ignored with --init (the checkpoint fixes it); drop it")
    need(init.get("image_size", cfg.image_size) == cfg.image_size,
         f"--init policy reads {init.get('image_size')}px images; pass --image-size {init.get('image_size')}")
    check_fits_suite("--init", init, cfg.suite, cfg.tasks, cfg.image_size, env_kwargs(cfg.env_kwargs, cfg.max_steps))


def check_train_out(out: str, overwrite: bool, fresh: bool = True) -> None:
    """A run directory: creatable, its checkpoint/ and final/ (replaced whole) are vlaforge policies if present,
    not another command's output, not a live run's, and (``fresh``) not an earlier run unless ``overwrite``."""
    check_out_dir("--out", out)
    for sub, kind in RUN_ENTRY_KINDS.items():  # what the run writes there must be what it finds there
        e = Path(out).expanduser() / sub
        if e.exists() or e.is_symlink():
            need(e.is_dir() if kind == "folder" else e.is_file(),
                 f"--out: '{e}' is {'a folder' if e.is_dir() else 'not a folder' if kind == 'folder' else 'not a file'}"
                 f", where the run writes its {sub} {kind}; remove it or choose another --out")
    for sub in ("checkpoint", "final"):
        check_replaceable("--out", Path(out) / sub, "policy")
    if fresh:
        check_target("train", out, overwrite)
    refuse_if_live("train", out, "--out")
