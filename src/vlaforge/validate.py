"""Input checks that every command runs first, before any env is stepped or any file is written.

``check(command, args, argv)`` validates the parsed options of ``vlaforge <command>`` and returns
them, possibly resolved (``train --resume``: the run directory becomes the checkpoint's parent
unless ``--out`` is given; env options are cast to the types their constructor declares). Every
failure raises ``UsageError`` whose one-line message names the flag or file and what to do; the
CLI prints exactly those errors (and ``EnvError`` / ``CheckpointError`` / ``MissingExtra``) as
one line with exit status 2, and lets every other exception keep its traceback (a bug).

Layering: this module sits above what it checks (envs, policies, train, recipes) and imports them at
module level; only ``vlaforge.cli`` imports it. The error classes live in the low module
``vlaforge.errors`` and the checkpoint-config allow-list in ``vlaforge.schema``, so that any module can
raise or use them; the names tests and callers know are re-exported here.

    python -c "from vlaforge.validate import check; ..."   # used by vlaforge.cli
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tempfile
from pathlib import Path

from vlaforge.data.lerobot import hwc as lerobot_hwc
from vlaforge.data.lerobot import is_vlaforge, parse_map, read_info
from vlaforge.device import DeviceOptions
from vlaforge.envs import SUITES, EnvError, _env_class, env_kwargs, env_tasks, require, suite_spec
from vlaforge.envs.options import EnvOptions
from vlaforge.errors import CheckpointError, NonFiniteError, UsageError
from vlaforge.fsutil import repair_atomic
from vlaforge.policies import read_config
from vlaforge.policies.heads import HEADS
from vlaforge.policies.hf.model import remote_code_files
from vlaforge.policies.options import PolicyShape
from vlaforge.policies.registry import family
from vlaforge.recipes import RECIPES
from vlaforge.recipes.grape import parse_weights
from vlaforge.runlock import check_target, refuse_if_live
from vlaforge.schema import (
    CONFIG_SCHEMAS,
    FORMAT_VERSION,
    check_policy_config,
    is_finite_number,
    register_config_schema,
)
from vlaforge.train.checkpoint import read_train_state
from vlaforge.train.logging import LogOptions

__all__ = ["CONFIG_SCHEMAS", "FORMAT_VERSION", "NonFiniteError", "UsageError", "check", "check_policy_config",
           "register_config_schema"]


# -- flags given on the command line --------------------------------------------------------------

def given_fields(argv: list[str], aliases: dict[str, str] | None = None) -> set[str]:
    """Dotted config field paths named by ``--flags`` in ``argv`` (``--ppo.clip`` -> ``ppo.clip``,
    ``--no-progress`` -> ``progress``); ``aliases`` maps a flag prefix to a field prefix
    (train's ``--policy.X`` is ``hf.X``)."""
    out = set()
    for a in argv:
        if not a.startswith("--") or a == "--":
            continue
        name = a[2:].split("=", 1)[0]
        parts = name.split(".")
        if parts[-1].startswith("no-"):
            parts[-1] = parts[-1][3:]
        path = ".".join(p.replace("-", "_") for p in parts)
        for src, dst in (aliases or {}).items():
            if path == src or path.startswith(src + "."):
                path = dst + path[len(src):]
                break
        out.add(path)
    return out


def _get(obj, path: str):
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


def flag(path: str, aliases: dict[str, str] | None = None) -> str:
    """The command-line spelling of a dotted field path (inverse of ``given_fields``)."""
    for dst, src in (aliases or {}).items():
        if path == src or path.startswith(src + "."):
            path = dst + path[len(src):]
    return "--" + path.replace("_", "-")


# -- numbers ----------------------------------------------------------------------------------------

def need(ok: bool, msg: str) -> None:
    if not ok:
        raise UsageError(msg)


is_finite = is_finite_number


def finite(name: str, v: float) -> None:
    need(is_finite(v) or isinstance(v, bool), f"{name} must be a finite number; got {str(v)[:40]}")


def at_least(name: str, v, lo, what: str = "") -> None:
    finite(name, v)
    need(v >= lo, f"{name} must be >= {lo}{what}; got {v}")


def positive(name: str, v, what: str = "") -> None:
    finite(name, v)
    need(v > 0, f"{name} must be > 0{what}; got {v}")


MAX_LR = 10.0
MIN_IMAGE, MAX_IMAGE = 8, 1024
MAX_VIEWS = 16
MAX_DIM = 4096
"""the largest state / action dimension a demo dataset may declare"""
SEED_LIMIT = 2 ** 32
"""seeds are numpy/torch seeds: 0 <= seed < 2**32"""
DEMO_SEED_BASE, DEMO_SEED_STRIDE = 1_000_000, 100_003
"""``data.demos.collect_demos``: env seed = seed * stride + base + k"""


def whole(name: str, v) -> None:
    need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be a whole number; got {v}")


def check_seed(name: str, v, span: int = 0) -> None:
    """A seed (or the first of ``span`` consecutive seeds): a whole number with 0 <= v and v + span < 2**32."""
    whole(name, v)
    need(0 <= v and v + span < SEED_LIMIT, f"{name} must be in [0, {SEED_LIMIT - 1 - span}] (numpy and torch seeds "
                                           f"are 32-bit); got {v}")


def check_image_size(name: str, v) -> None:
    whole(name, v)
    need(MIN_IMAGE <= v <= MAX_IMAGE, f"{name} must be in [{MIN_IMAGE}, {MAX_IMAGE}] pixels; got {v}")


def learning_rate(name: str, v) -> None:
    """> 0 and at most MAX_LR: AdamW moves every weight by ~lr per step, so larger values only diverge
    (and past ~1e37 overflow inside the optimizer)."""
    positive(name, v)
    need(v <= MAX_LR, f"{name} {v} is far above any useful AdamW rate (each step moves weights by ~lr); "
                      f"pass a value <= {MAX_LR:g}, typically 1e-5 .. 1e-3")


# -- paths ------------------------------------------------------------------------------------------

def _probe_writable(d: Path, name: str) -> None:
    """Create and delete a file in the existing directory ``d`` (also right for root and read-only mounts)."""
    try:
        fd, p = tempfile.mkstemp(prefix=".vlaforge-probe-", dir=d)
        os.close(fd)
        os.unlink(p)
    except OSError as e:
        raise UsageError(f"{name}: cannot write in '{d}' ({e.strerror or type(e).__name__}); "
                         "choose a writable directory") from None


OUT_SUFFIX = 32
"""bytes an output's name may grow by: its temp and lock siblings (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.lock``)"""
PATH_FLAGS = {"out": "--out", "checkpoint": "--checkpoint", "demos": "--demos", "init": "--init", "resume": "--resume",
              "hf.path": "--policy.path"}
"""path options every command's checks first pass through ``check_path``"""


def _name_max(p: Path) -> int:
    """The longest file name (bytes) the file system under ``p`` (its nearest existing folder) allows."""
    q = p.absolute()
    while True:
        try:
            return os.pathconf(q, "PC_NAME_MAX")
        except (OSError, ValueError):
            if q == q.parent:
                return 255
            q = q.parent


def check_path(name: str, path: str | os.PathLike, out: bool = False) -> None:
    """``path`` is a usable path before anything reads or writes it: no NUL byte, each name within the file system's
    limit (an output's with room for its temp siblings' suffixes), and every existing part resolves (no symlink
    loop, no dangling symlink, no folder without permission): one-line ``UsageError`` otherwise."""
    s = os.fspath(path)
    need("\0" not in s, f"{name} holds a NUL character; pass a path")
    p = Path(s).expanduser()
    limit = _name_max(p)
    room = OUT_SUFFIX if out else 0
    for part in p.parts:
        n = len(os.fsencode(part))
        need(n + room <= limit, f"{name}: the name '{part[:24]}...' is {n} bytes; the file system allows {limit}"
                                + (f" (an output's name needs {room} more for its temp files)" if out else "")
                                + ": choose a shorter name")
    full = p.absolute()
    need(len(os.fsencode(str(full))) + room < 4096, f"{name}: the path is longer than the file system allows "
                                                    "(4096 bytes); choose a shorter one")
    for q in [*reversed(full.parents), full]:
        try:
            os.stat(q)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(q):
                raise UsageError(f"{name}: '{q}' is a symbolic link to the missing '{os.readlink(q)}'; fix the link or "
                                 "choose another path") from None
            return
        except OSError as e:
            raise UsageError(f"{name}: cannot use '{q}' ({e.strerror or type(e).__name__}); choose another path") \
                from None


def check_out_dir(name: str, path: str | os.PathLike) -> None:
    """``path`` will be a directory: it is one already, or it can be created under a writable folder."""
    p = Path(path).expanduser()
    need(str(path).strip() != "", f"{name} is empty; pass a directory")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{name} '{path}' is a file, not a directory; pass a directory path")
    _check_creatable(name, p)


def check_out_file(name: str, path: str | os.PathLike) -> None:
    """``path`` will be a file: not an existing directory, in a folder that exists or can be created."""
    p = Path(path).expanduser()
    need(str(path).strip() != "", f"{name} is empty; pass a file path")
    if p.is_dir():
        raise UsageError(f"{name} '{path}' is a directory; pass a file path (e.g. {Path(path) / 'eval.json'})")
    _check_creatable(name, p.parent)


REPLACEABLE = {"demos": ("meta/info.json", "demo dataset"), "policy": ("config.json", "policy directory")}


def check_replaceable(name: str, path: str | os.PathLike, kind: str) -> None:
    """``path`` is written atomically as a whole (an existing directory is replaced, everything in it deleted):
    refuse unless it is absent, empty, or an earlier vlaforge output of the same ``kind`` (demos | policy)."""
    p = Path(path).expanduser()
    if not p.is_dir() or not any(p.iterdir()):
        return
    marker, what = REPLACEABLE[kind]
    need((p / marker).is_file(), f"{name} '{path}' exists and is not a vlaforge {what}: writing it would delete "
                                 "everything in it; pass a new or empty directory")


def check_manifest_replaceable(name: str, path: Path) -> None:
    """An existing file at an eval manifest's path must be an earlier manifest (it is overwritten)."""
    if not path.is_file():
        return
    try:
        ok = isinstance(json.loads(path.read_text()), dict) and "results" in json.loads(path.read_text())
    except (OSError, ValueError):
        ok = False
    need(ok, f"{name} '{path}' exists and is not an eval manifest: it would be overwritten; pass a new file path")


def _check_creatable(name: str, p: Path) -> None:
    q = p.absolute()
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise UsageError(f"{name} '{p}' lies under the file '{q}'; choose a path under a directory")
    _probe_writable(q, name)


def check_in_dir(name: str, path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"{name} '{path}' is not a directory; pass {what}")
    return p


# -- env options ------------------------------------------------------------------------------------

POSITIVE_ENV_OPTIONS = {"radius", "speed", "max_steps", "cache"}
NONNEG_ENV_OPTIONS = {"shaping", "settle_steps"}


def check_env_kwargs(suite: str, kwargs: dict, name: str = "--env-kwargs", taken: dict[str, str] | None = None) -> dict:
    """``kwargs`` against the keyword options of the suite's env constructor (read with inspect.signature).

    Returns them with whole-number options cast to int (switches stay 0.0 / 1.0, as the config type says).
    ``taken``: option -> the flag that sets it already (``image_size`` -> ``--image-size``)."""
    if suite not in SUITES:
        raise EnvError(f"unknown suite '{suite}'; choose one of: {', '.join(SUITES)}")
    params = inspect.signature(_env_class(suite).__init__).parameters
    options = {k: p for k, p in params.items() if k not in ("self", "tasks") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    taken = {"image_size": "--image-size", **(taken or {})}
    out = {}
    for k, v in kwargs.items():
        if k in taken:
            raise UsageError(f"{name} {k}: set it with {taken[k]} instead")
        if k not in options:
            known = ", ".join(o for o in options if o not in taken)
            raise UsageError(f"{name}: suite '{suite}' has no option '{k}'; its options: {known}")
        d = options[k].default
        if isinstance(d, str) or (isinstance(d, tuple) and d and isinstance(d[0], str)):
            raise UsageError(f"{name} {k}: a text option, which --env-kwargs (numbers only) cannot set")
        finite(f"{name} {k}", v)
        if isinstance(d, bool):
            need(v in (0, 1), f"{name} {k} is a switch: pass 0 or 1; got {v}")  # kept a number (dict[str, float])
        elif isinstance(d, int) or (d is None and k == "max_steps"):
            need(float(v).is_integer(), f"{name} {k} must be a whole number; got {v}")
            v = int(v)
        if k in POSITIVE_ENV_OPTIONS:
            need(v > 0, f"{name} {k} must be > 0; got {v}")
        if k in NONNEG_ENV_OPTIONS:
            need(v >= 0, f"{name} {k} must be >= 0; got {v}")
        out[k] = v
    return out


def task_list(name: str, tasks: str | None) -> None:
    """A comma-separated task selection names each task once (a repeated name would count its episodes twice)."""
    if not tasks:
        return
    names = [n.strip() for n in tasks.split(",")]
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, f"{name} names '{dup[0] if dup else ''}' more than once; list each task once")


MAX_ENVS = 4096


def num_envs(v: int, name: str = "--num-envs") -> None:
    at_least(name, v, 1)
    need(v <= MAX_ENVS, f"{name} {v}: more envs than one machine holds in memory (each keeps a simulator and its "
                        f"images); pass at most {MAX_ENVS}, typically 8 .. 64")


def check_env_options(a: EnvOptions, max_steps: int | None = None) -> None:
    """The options every command shares (``envs.options.EnvOptions``): tasks, envs, workers, env kwargs (cast to
    their types in place). ``max_steps``: the command's ``--max-steps`` when set (then not an env kwarg)."""
    task_list("--tasks", a.tasks)
    num_envs(a.num_envs)
    at_least("--workers", a.workers, 0, " (0 = envs in this process)")
    a.env_kwargs = check_env_kwargs(a.suite, a.env_kwargs, taken={"max_steps": "--max-steps"} if max_steps else {})


# -- per command ------------------------------------------------------------------------------------

def check(command: str, args, argv: list[str]):
    """Validate ``args`` of ``vlaforge <command>`` (``argv``: the command's own arguments); returns them."""
    fn = {"collect": check_collect, "sft": check_sft, "eval": check_eval, "train": check_train,
          "demo": check_demo}.get(command)
    # each option group checks its own fields (both define check(): called by class, not through the MRO)
    if isinstance(args, DeviceOptions):  # a device this machine lacks is refused before any work
        DeviceOptions.check(args)
    if isinstance(args, LogOptions):  # --log wandb without the wandb package
        LogOptions.check(args)
    for field, fl in PATH_FLAGS.items():  # symlink loops, names too long: one line before anything else
        try:
            v = _get(args, field)
        except AttributeError:
            continue
        if isinstance(v, (str, os.PathLike)) and str(v):
            check_path(fl, v, out=field == "out")
    return fn(args, argv) if fn is not None else args


def check_collect(a, argv):
    check_env_options(a)
    check_image_size("--image-size", a.image_size)
    at_least("--episodes", a.episodes, 1, " (episodes per task)")
    check_seed("--seed", a.seed)
    top = a.seed * DEMO_SEED_STRIDE + DEMO_SEED_BASE + a.episodes  # collect_demos' env seeds
    need(top < SEED_LIMIT, f"--seed {a.seed} with --episodes {a.episodes} gives demo env seeds up to {top}, past the "
                           f"32-bit seeds envs take; pass --seed <= {(SEED_LIMIT - DEMO_SEED_BASE - a.episodes) // DEMO_SEED_STRIDE}")
    at_least("--noise", a.noise, 0)
    if a.format == "v3":  # MP4 video: PyAV, checked before any episode is collected
        require("av", "lerobot")
    check_out_dir("--out", a.out)
    check_target("collect", a.out)
    check_replaceable("--out", a.out, "demos")
    refuse_if_live("collect", a.out, "--out")
    return a


def check_demo(a, argv):
    for f in ("demo_episodes", "sft_steps", "rl_iterations", "groups", "group_size", "eval_episodes"):
        at_least(flag(f), getattr(a, f), 1)
    at_least("--max-steps", a.max_steps, 0)
    check_env_options(a, a.max_steps)
    need(a.algo in ("ppo", "grpo", "rloo", "tpo", "distill"),
         f"--algo '{a.algo}' is unknown; choose ppo, grpo, rloo, tpo or distill")
    need(a.algo != "distill" or (a.suite == "metaworld" and "," not in a.tasks),
         "--algo distill runs on one metaworld task (its teacher reads that task's privileged state); pass one --tasks name")
    at_least("--teacher-iterations", a.teacher_iterations, 1)
    at_least("--teacher-demos", a.teacher_demos, 0)
    check_out_dir("--out", a.out)
    check_target("demo", a.out)
    check_replaceable("--out", Path(a.out) / "demos", "demos")
    for sub in ("sft", "rl/final", "rl/checkpoint"):
        check_replaceable("--out", Path(a.out) / sub, "policy")
    refuse_if_live("demo", a.out, "--out")
    return a


def read_json(path: Path, what: str):
    """Parse a JSON file; a UsageError naming the file and the line on failure."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {what} '{path}' ({type(e).__name__}); re-create it") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} '{path}' is not valid JSON (line {e.lineno}: {e.msg}); re-create it") from None


def read_jsonl(path: Path, what: str) -> list:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {what} '{path}' ({type(e).__name__}); re-create it") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{what} '{path}' line {i} is not valid JSON ({e.msg}); re-create the demos") from None
    return rows


def check_demos(path: str, name: str = "--demos", demos_map: str | None = None) -> dict:
    """A demo directory's metadata (meta/info.json, tasks.jsonl, episodes.jsonl) parses and has the keys
    ``load_demos`` reads; returns info.json's content."""
    d = Path(path).expanduser()
    info_f = d / "meta" / "info.json"
    if not info_f.exists():
        raise UsageError(f"{name}: no demo dataset at '{path}' (meta/info.json missing); create one with `vlaforge collect`")
    info = read_json(info_f, "demo metadata")
    if isinstance(info, dict) and (not is_vlaforge(info) or demos_map):  # a LeRobot dataset: version and mapping
        try:
            raw = read_info(d)
        except EnvError as e:
            raise UsageError(f"{name}: {e}") from None
        fm = parse_map(demos_map, raw, "--demos-map")  # UsageError naming the missing feature or bad role
        try:
            (H, W, _), S, A = lerobot_hwc(raw["features"][fm.images[0]]), *(
                int(raw["features"][k]["shape"][0]) for k in (fm.state, fm.action))
        except (EnvError, KeyError, IndexError, TypeError, ValueError):
            raise UsageError(f"{name}: '{info_f}' lacks the shapes of the mapped features; fix the dataset") from None
        need(H == W, f"{name}: the mapped cameras give {H}x{W} frames; the policies read square images")
        need(S > 0 and A > 0, f"{name}: the mapped state/action features have no dimensions")
        return {"features": {"observation.state": {"shape": [S]}, "action": {"shape": [A]}}, "image_size": H,
                "views": len(fm.images), "codebase_version": raw["codebase_version"]}
    try:
        shape = info["features"]["observation.state"]["shape"][0], info["features"]["action"]["shape"][0]
        ok = (all(isinstance(x, int) and 0 < x <= MAX_DIM for x in shape) and isinstance(info["image_size"], int)
              and isinstance(info["camera"], str) and isinstance(info["data_path"], str)
              and isinstance(info.get("views", 1), int))
    except (KeyError, IndexError, TypeError):
        ok = False
    need(ok, f"demo metadata '{info_f}' lacks the features/state/action shapes, image_size, camera or data_path "
             "of a `vlaforge collect` dataset; re-create it")
    need(MIN_IMAGE <= info["image_size"] <= MAX_IMAGE and 1 <= info.get("views", 1) <= MAX_VIEWS,
         f"demo metadata '{info_f}' gives image_size {info['image_size']} and views {info.get('views', 1)}; a "
         f"`vlaforge collect` dataset has {MIN_IMAGE}..{MAX_IMAGE} px and 1..{MAX_VIEWS} views: re-create it")
    chunks, fps = info.get("chunks_size", 1000), info.get("fps", 10)
    need(isinstance(chunks, int) and not isinstance(chunks, bool) and chunks >= 1,
         f"demo metadata '{info_f}': chunks_size {json.dumps(chunks)[:20]} is not a whole number >= 1; re-create it")
    need(is_finite(fps) and fps > 0,
         f"demo metadata '{info_f}': fps {json.dumps(fps)[:20]} is not a positive number; re-create it")
    try:
        info["data_path"].format(episode_chunk=0, episode_index=0)
    except (KeyError, IndexError, ValueError, AttributeError):
        raise UsageError(f"demo metadata '{info_f}': data_path '{info['data_path'][:60]}' does not name episode "
                         "files with {episode_chunk} and {episode_index}; re-create it") from None
    tasks = read_jsonl(d / "meta" / "tasks.jsonl", "demo task list") if (d / "meta" / "tasks.jsonl").exists() else None
    need(tasks is not None and all(isinstance(t, dict) and {"task_index", "name", "task"} <= set(t) for t in tasks),
         f"demo task list '{d / 'meta' / 'tasks.jsonl'}' is missing or lacks task_index/name/task; re-create the demos")
    eps_f = d / "meta" / "episodes.jsonl"
    eps = read_jsonl(eps_f, "demo episode list") if eps_f.exists() else None
    need(eps is not None and all(isinstance(e, dict) and {"episode_index", "success", "task_name"} <= set(e)
                                 for e in eps),
         f"demo episode list '{eps_f}' is missing or lacks episode_index/success/task_name; re-create the demos")
    need(any(e["success"] for e in eps), f"{name} '{path}' holds no successful episode; collect more demos")
    first = None
    for e in eps:  # the files load_demos reads (their content is checked as it reads them)
        if e["success"] and isinstance(e["episode_index"], int):
            f = d / info["data_path"].format(episode_chunk=e["episode_index"] // info.get("chunks_size", 1000),
                                             episode_index=e["episode_index"])
            need(f.is_file(), f"{name}: demo episode file '{f}' is missing; re-collect the demos with `vlaforge collect`")
            first = first or f
    if first is not None:
        check_demo_episode(first, info, info_f)
    return info


def check_demo_episode(f: Path, info: dict, info_f: Path) -> None:
    """One episode file agrees with info.json: the camera column holds PNG frames of image_size x (views *
    image_size), the state and action rows have the declared lengths (a hand-edited info.json is refused here,
    not as a shape error inside training)."""
    import pyarrow.parquet as pq

    from vlaforge.data.demos import _unpng

    cam = f"observation.images.{info['camera']}"
    try:
        t = pq.read_table(f).slice(0, 1).to_pydict()
    except (OSError, ValueError):
        return  # an unreadable file: load_demos' own one-line error names it
    S, A = info["features"]["observation.state"]["shape"][0], info["features"]["action"]["shape"][0]
    V, H = info.get("views", 1), info["image_size"]
    need(cam in t, f"demo metadata '{info_f}': camera '{info['camera']}' names no column of '{f}'; re-create it")
    try:
        img = _unpng(t[cam][0]["bytes"])
        shape = tuple(img.shape)
        dims = len(t["observation.state"][0]), len(t["action"][0])
    except (KeyError, IndexError, TypeError, ValueError, OSError):
        raise UsageError(f"demo episode file '{f}' lacks readable frames, state or action; re-collect the demos") \
            from None
    need(shape[:2] == (H, H * V), f"demo metadata '{info_f}' says {V} view(s) of {H}px but '{f}' holds "
                                  f"{shape[0]}x{shape[1]} frames; re-create the dataset")
    need(dims == (S, A), f"demo metadata '{info_f}' says state/action dims {S}/{A} but '{f}' holds "
                         f"{dims[0]}/{dims[1]}; re-create the dataset")


def check_sft(a, argv):
    given = given_fields(argv)
    at_least("--threads", a.threads, 1)
    s = a.sft
    at_least("--sft.steps", s.steps, 1)
    at_least("--sft.batch-size", s.batch_size, 1)
    learning_rate("--sft.lr", s.lr)
    at_least("--sft.weight-decay", s.weight_decay, 0)
    positive("--sft.grad-clip", s.grad_clip)
    at_least("--sft.augment-shift", s.augment_shift, 0)
    check_seed("--sft.seed", s.seed)
    for f in ("aux_weight",):
        if hasattr(s, f):
            at_least("--sft." + f.replace("_", "-"), getattr(s, f), 0)
    info = check_demos(a.demos, demos_map=a.demos_map)
    render0 = info.get("renderer") == "none"
    if a.init:
        fresh_only = sorted(f for f in given if f in (*SHAPE_FLAGS, "aux"))
        need(not fresh_only, f"{flag(fresh_only[0]) if fresh_only else ''} shapes a fresh policy and is ignored with "
                             "--init (the checkpoint fixes it); drop it")
        meta = read_config_checked("--init", a.init, a.trust_remote_code, TRUST_FLAG["sft"])
        pol = meta["policy"]
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
        check_shape(a)
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


SHAPE_FLAGS = tuple(f.name for f in dataclasses.fields(PolicyShape))
"""the fields of a fresh policy's shape (``--head``, ``--chunk-size``, ``--backbone``): refused with ``--init``"""


def check_shape(s: PolicyShape) -> None:
    """``--head``, ``--backbone`` and ``--chunk-size`` of a fresh policy (sft and train)."""
    need(s.head in HEADS, f"--head '{s.head}' is unknown; choose one of {', '.join(HEADS)}")
    need(s.backbone in ("vision", "state"), f"--backbone '{s.backbone}' is unknown; choose vision or state")
    at_least("--chunk-size", s.chunk_size, 1)


TRUST_FLAG = {"eval": "--trust-remote-code", "sft": "--trust-remote-code", "train": "--policy.trust-remote-code"}
"""each command's flag that lets a checkpoint run its own code"""


def check_remote_code(pol: dict, path: str, trust: bool, name: str = "--checkpoint",
                      trust_flag: str | None = TRUST_FLAG["eval"]) -> None:
    """A checkpoint's family-specific checks before it is loaded (the registry's ``check_checkpoint``: an HF model
    folder that asks to run its own code is refused unless ``trust``, the command's ``trust_flag``)."""
    fam = family(pol.get("family", "tiny"))
    if fam.check_checkpoint:
        fam.fn("check_checkpoint")(pol, path, trust, name, trust_flag)


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
    at_least("--threads", a.threads, 1)
    check_env_options(a)
    at_least("--episodes", a.episodes, 1, " (episodes per task)")
    at_least("--videos", a.videos, 0)
    check_seed("--seed-base", a.seed_base, a.episodes)
    meta = read_config_checked("--checkpoint", a.checkpoint, a.trust_remote_code, TRUST_FLAG["eval"])
    pol = meta["policy"]
    check_fits_suite("--checkpoint", pol, a.suite, a.tasks, pol.get("image_size"), a.env_kwargs)
    out = Path(a.out) if a.out else Path(a.checkpoint) / f"eval_{a.suite}.json"
    check_out_file("--out" if a.out else f"--out (default {out})", out)
    check_manifest_replaceable("--out" if a.out else f"--out (default {out})", out)
    return a


# train ---------------------------------------------------------------------------------------------

TRAIN_ALIASES = {"policy": "hf", "ray.enabled": "ray.enabled"}
RESUME_MAY_CHANGE = ("resume", "out", "progress", "tensorboard", "ray", "hf.trust_remote_code", "overwrite")
"""train fields a resumed run takes from the command line; every other one comes from the checkpoint"""


def _train_given(argv) -> set[str]:
    g = given_fields(argv, {"policy": "hf"})
    if "hf" in g:  # `--policy hf` is the field `policy`; `--policy.X` is `hf.X`
        g.discard("hf")
        g.add("policy")
    return g


def check_algo_config(name: str, c) -> None:
    """Generic sanity of an algorithm's config (``--<algo>.*``)."""
    p = f"--{name}."
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        fl = p + f.name.replace("_", "-")
        if isinstance(v, float):
            finite(fl, v)
        if f.name in ("epochs", "minibatch_size", "pairs_per_group", "pairs_per_batch"):
            at_least(fl, v, 1)
        elif f.name == "group_size":
            at_least(fl, v, 2 if name in ("grpo", "rloo", "tpo") else 1,
                     " (a group method compares rollouts of one initial state)" if name != "ppo" else "")
        elif f.name in ("gamma", "lam"):
            need(0 <= v <= 1, f"{fl} must be in [0, 1]; got {v}")
        elif f.name == "temperature":
            positive(fl, v)
        elif f.name in ("clip", "clip_low", "clip_high", "grad_clip", "beta"):
            positive(fl, v)
        elif f.name in ("vf_coef", "ent_coef", "critic_warmup", "min_abs_adv", "kl_backtracks"):
            at_least(fl, v, 0)
        elif f.name in ("kl_guard", "value_clip") and v is not None:
            positive(fl, v, " (or None = off)")
        elif f.name == "level":
            need(v in ("token", "action", "chunk"), f"{fl} '{v}' is unknown; choose token, action or chunk")
        elif f.name == "keep_band" and v is not None:
            need(len(v) == 2 and 0 <= v[0] <= v[1] <= 1, f"{fl} must be two rates lo <= hi in [0, 1]; got {v}")


def check_privileged_options(cfg) -> None:
    """--critic privileged and --<algo>.readout-coef need the tiny VLA (with a readout for the latter); --algo distill
    needs teachers whose state is as long as their sim_state fields (``check_distill``)."""
    init = read_config_checked("--init", cfg.init, cfg.hf.trust_remote_code)["policy"] if cfg.init else None
    caps = family(init.get("family", "tiny") if init is not None else cfg.policy).caps
    tiny = "privileged_critic" in caps
    need(cfg.critic != "privileged" or tiny, "--critic privileged is available for the tiny VLA only; drop it")
    need(not getattr(cfg.algo_cfg, "readout_coef", 0.0) or (tiny and init is not None and bool(init.get("aux_index"))),
         f"--{cfg.algo}.readout-coef needs an --init policy with a perception readout (`vlaforge sft --aux`)")
    if cfg.algo == "distill":
        check_distill(cfg)


def check_distill(cfg) -> None:
    """``--distill.*``: the teachers and their sim_state fields (``algos.distill.check_teachers``), or the teacher
    cache's options; the fields resolved against the suite's names."""
    from vlaforge.algos import distill
    from vlaforge.envs import suite_info, suite_task_names

    d = cfg.algo_cfg
    spec = suite_spec(cfg.suite, env_tasks(cfg.suite, cfg.tasks), image_size=cfg.image_size,
                      **env_kwargs(cfg.env_kwargs, cfg.max_steps))
    if d.teacher_state.strip():
        distill.state_fields(d.teacher_state, spec.sim_state_names, spec.sim_state_groups)
    if not d.teachers_cache:
        tasks = suite_task_names(spec, cfg.tasks if suite_info(cfg.suite).holds_all_tasks else None)
        distill.check_teachers(d, spec, tasks, lambda p: read_config_checked("--distill.teacher", p, False, None))
        return
    need(not d.teacher, "--distill.teacher and --distill.teachers-cache are exclusive: give the teachers or the "
                        "cache that builds them")
    need("privileged" in spec.sim_state_groups, f"--distill.teachers-cache builds privileged teachers for suites "
                                                f"with a named privileged state (metaworld); '{cfg.suite}' has none")
    check_out_dir("--distill.teachers-cache", d.teachers_cache)
    at_least("--distill.teacher-demos", d.teacher_demos, 0, " (0: PPO from scratch)")
    at_least("--distill.teacher-iterations", d.teacher_iterations, 1)
    check_seed("--distill.teacher-seed", d.teacher_seed)


def check_train(cfg, argv):
    """Also resolves a resume: the run directory is the checkpoint's parent unless --out is given."""
    given = _train_given(argv)
    if cfg.resume:
        return check_resume(cfg, given)
    check_train_fresh(cfg, given)
    check_train_out(cfg.out, getattr(cfg, "overwrite", False))
    return cfg


RUN_ENTRY_KINDS = {"metrics.jsonl": "file", "train_config.json": "file", "checkpoint": "folder", "final": "folder",
                   "tb": "folder"}
"""what ``vlaforge train`` writes in its run folder, and as what"""


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


def check_train_numbers(cfg) -> None:
    """The checks of a training config that read no file: numbers, choices, env options (cast in place). Run on a
    fresh command line and, on ``--resume``, on the checkpoint's saved config (state.json is input too)."""
    if cfg.threads is not None:
        at_least("--threads", cfg.threads, 1)
    task_list("--eval-tasks", cfg.eval_tasks)
    at_least("--iterations", cfg.iterations, 1)
    at_least("--groups", cfg.groups, 1, " (initial states per iteration)")
    check_image_size("--image-size", cfg.image_size)
    if cfg.max_steps is not None:
        at_least("--max-steps", cfg.max_steps, 1)
    check_env_options(cfg, cfg.max_steps)
    learning_rate("--lr", cfg.lr)
    at_least("--lr-warmup", cfg.lr_warmup, 0, " iterations")
    learning_rate("--value-lr", cfg.value_lr)
    at_least("--weight-decay", cfg.weight_decay, 0)
    positive("--curriculum-tau", cfg.curriculum_tau)
    need(0 < cfg.curriculum_floor <= 1, f"--curriculum-floor must be in (0, 1]; got {cfg.curriculum_floor}")
    need(0 < cfg.fill_fraction <= 1, f"--fill-fraction must be in (0, 1]; got {cfg.fill_fraction}")
    at_least("--max-collect-rounds", cfg.max_collect_rounds, 1)
    at_least("--eval-every", cfg.eval_every, 0, " (0 = no evaluation)")
    at_least("--eval-episodes", cfg.eval_episodes, 1)
    at_least("--checkpoint-every", cfg.checkpoint_every, 1, " iterations")
    check_seed("--seed", cfg.seed)
    check_algo_config(cfg.algo, cfg.algo_cfg)
    check_hf_options(cfg.hf)
    if not cfg.init:
        check_shape(cfg)


def check_train_fresh(cfg, given: set[str]) -> None:
    check_train_numbers(cfg)
    check_privileged_options(cfg)
    if cfg.algo == "tpo" and getattr(cfg.algo_cfg, "reference", "rollout") == "base":
        lora = (read_config_checked("--init", cfg.init, cfg.hf.trust_remote_code)["policy"].get("lora_rank", 0)
                if cfg.init else (cfg.hf.lora_rank if "base_reference" in family(cfg.policy).caps else 0))
        need(lora > 0, "--tpo.reference base needs a policy with LoRA adapters (--policy hf --policy.lora-rank N, "
                       "or an --init checkpoint trained so)")
    check_ray(cfg.ray)
    if cfg.recipe:
        check_recipe(cfg, given)
    if cfg.init:
        fresh_only = sorted(f for f in given if f in (*SHAPE_FLAGS, "policy")
                            or (f.startswith("hf.") and f != "hf.trust_remote_code"))
        need(not fresh_only, f"{flag(fresh_only[0], {'policy': 'hf'}) if fresh_only else ''} shapes a fresh policy "
                             "and is ignored with --init (the checkpoint fixes it); drop it")
        meta = read_config_checked("--init", cfg.init, cfg.hf.trust_remote_code)
        pol = meta["policy"]
        need(pol.get("image_size", cfg.image_size) == cfg.image_size,
             f"--init policy reads {pol.get('image_size')}px images; pass --image-size {pol.get('image_size')}")
        check_fits_suite("--init", pol, cfg.suite, cfg.tasks, cfg.image_size, env_kwargs(cfg.env_kwargs, cfg.max_steps))
    else:
        fam = family(cfg.policy)
        if fam.check_fresh:  # the family's own checks (the tiny VLA's image size, an HF model folder ...)
            fam.fn("check_fresh")(cfg)


def check_hf_options(h) -> None:
    """``--policy.*`` numbers of an HF policy (read by ``--policy hf`` and the other VLM families)."""
    at_least("--policy.n-bins", h.n_bins, 2)
    at_least("--policy.max-text-tokens", h.max_text_tokens, 1)
    at_least("--policy.head-hidden", h.head_hidden, 1)
    finite("--policy.log-std-init", h.log_std_init)
    at_least("--policy.flow-steps", h.flow_steps, 2, " (one step leaves the flow head's noise scale undefined)")
    at_least("--policy.flow-noise", h.flow_noise, 0)
    at_least("--policy.lora-rank", h.lora_rank, 0, " (0 = no LoRA)")
    positive("--policy.lora-alpha", h.lora_alpha)
    need(0 <= h.lora_dropout < 1, f"--policy.lora-dropout must be in [0, 1); got {h.lora_dropout}")
    at_least("--policy.micro-batch", h.micro_batch, 0, " (0 = off)")


def check_ray(r) -> None:
    """``--ray.*`` (taken from the command line on resume too)."""
    if not r.enabled:
        return
    at_least("--ray.env-workers", r.env_workers, 1)
    at_least("--ray.learners", r.learners, 1)
    positive("--ray.env-worker-cpus", r.env_worker_cpus)
    positive("--ray.learner-cpus", r.learner_cpus)
    for name, g in (("--ray.learner-gpus", r.learner_gpus), ("--ray.env-worker-gpus", r.env_worker_gpus)):
        finite(name, g)
        need(0 <= g <= 1, f"{name} must be in [0, 1] (a fraction shares one GPU; a learner or worker uses one "
                          f"device: for more GPUs add learners with --ray.learners N); got {g}")
    if r.num_cpus is not None:
        at_least("--ray.num-cpus", r.num_cpus, 1)
    at_least("--ray.max-env-worker-restarts", r.max_env_worker_restarts, 0)
    positive("--ray.startup-timeout-s", r.startup_timeout_s)
    positive("--ray.collective-timeout-s", r.collective_timeout_s)


def read_config_checked(name: str, path: str, trust: bool, trust_flag: str | None = TRUST_FLAG["train"]) -> dict:
    """A checkpoint's config, checked; an HF one whose files ask to run code is refused unless ``trust`` (the
    command's flag ``trust_flag``; None: the command never runs such code)."""
    meta = read_config(path)
    check_remote_code(meta["policy"], path, trust, name, trust_flag)
    return meta


def check_recipe(cfg, given: set[str]) -> None:
    need(cfg.recipe in RECIPES, f"--recipe: unknown recipe '{cfg.recipe}'; choose one of: {', '.join(RECIPES)}")
    if cfg.recipe == "ire-vla":
        need("iterations" not in given, "--iterations is not read by the ire-vla recipe; set the RL stage's length "
                                        "with --ire-vla.rl-iterations and the number of rounds with --ire-vla.rounds")
        need(bool(cfg.init), "the ire-vla recipe starts from an SFT checkpoint: pass --init DIR (from `vlaforge sft`)")
        ic = cfg.ire_vla
        at_least("--ire-vla.rounds", ic.rounds, 1)
        at_least("--ire-vla.rl-iterations", ic.rl_iterations, 1)
        at_least("--ire-vla.sl-steps", ic.sl_steps, 0)
        learning_rate("--ire-vla.sl-lr", ic.sl_lr)
        need(0 <= ic.demo_fraction <= 1, f"--ire-vla.demo-fraction must be in [0, 1]; got {ic.demo_fraction}")
        if ic.demos:
            check_demos(ic.demos, "--ire-vla.demos")
    elif cfg.recipe == "grape":
        need(cfg.algo == "tpo", f"the grape recipe trains with TPO; drop --algo {cfg.algo}")
        need(cfg.grape.decomposer in ("rule", "lm"), f"--grape.decomposer '{cfg.grape.decomposer}' is unknown; "
                                                     "choose rule or lm")
        need(cfg.grape.decomposer != "lm" or bool(cfg.grape.lm_path),
             "--grape.decomposer lm needs --grape.lm-path DIR (a local transformers text model)")
        try:
            parse_weights(cfg.grape.cost_weights)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if cfg.grape.lm_path:
            d = check_in_dir("--grape.lm-path", cfg.grape.lm_path, "a local transformers text model directory")
            need((d / "config.json").is_file(), f"--grape.lm-path '{cfg.grape.lm_path}' holds no config.json; pass a "
                                                "directory written by save_pretrained (model and tokenizer)")
            files = remote_code_files(d)
            need(not files, f"--grape.lm-path: '{files[0] if files else ''}' asks to run the model's own Python code "
                            "(auto_map); vlaforge never runs it for --grape.lm-path: pass a model transformers knows")
        spec = suite_spec(cfg.suite, env_tasks(cfg.suite, cfg.tasks), image_size=cfg.image_size,
                          **env_kwargs(cfg.env_kwargs, cfg.max_steps))
        need(bool(spec.sim_state_names), f"--suite {cfg.suite} exposes no simulator state, which GRAPE's staged "
                                         "costs need; use a suite with sim_state (pointreach, metaworld, kitchen, ...)")
    elif cfg.recipe == "vla-rl":
        v = cfg.vla_rl
        finite("--vla-rl.rprm-weight", v.rprm_weight)
        at_least("--vla-rl.rprm-steps", v.rprm_steps, 1)
        if cfg.init:
            pol = read_config_checked("--init", cfg.init, cfg.hf.trust_remote_code)["policy"]
            need(pol.get("head") == "tokens", "VLA-RL trains a binned action-token head; SFT one with "
                                              "`vlaforge sft --head tokens` and pass it as --init")
        if v.rprm:
            check_in_dir("--vla-rl.rprm", v.rprm, "a process reward model directory written by a vla-rl run (<out>/rprm)")
        elif v.rprm_weight != 0:
            demos = v.demos or (read_config_checked("--init", cfg.init, cfg.hf.trust_remote_code).get(
                "trained_on", {}).get("demos") if cfg.init else None)
            need(bool(demos) and Path(demos).exists(),
                 "vla-rl needs demos to train its process reward model: pass --vla-rl.demos DIR (from `vlaforge "
                 "collect`) or a trained model with --vla-rl.rprm DIR")
            check_demos(demos, "--vla-rl.demos")


def check_resume(cfg, given: set[str]):
    """``--resume CK``: the checkpoint is complete and sound; flags the checkpoint fixes are refused unless
    equal to its values; the run directory is CK's parent unless ``--out`` is given. Stale temp dirs of an
    interrupted save are repaired first."""
    ck = Path(cfg.resume).expanduser()
    if not (ck / "state.json").exists() and (ck / "checkpoint" / "state.json").exists():
        raise UsageError(f"--resume '{cfg.resume}' is a run directory; pass its checkpoint: --resume {ck / 'checkpoint'}")
    refuse_if_live("train", ck.absolute().parent, "--resume: the run")  # before touching its temp dirs
    repair_atomic(ck)
    state = read_train_state(ck)
    saved = state["config_obj"]
    try:  # the saved config is input like a command line: a hand-edited lr NaN never trains
        check_train_numbers(saved)
    except UsageError as e:
        raise CheckpointError(f"'{ck / 'state.json'}': its training config is invalid ({e}); resume from another "
                              "checkpoint or start a new run") from None
    for f in sorted(given):
        if f.split(".")[0] in RESUME_MAY_CHANGE or f in RESUME_MAY_CHANGE:
            continue
        try:
            mine, theirs = _get(cfg, f), _get(saved, f)
        except AttributeError:
            continue  # not a field (tyro rejects unknown flags before this)
        if mine != theirs:
            raise UsageError(f"{flag(f, {'policy': 'hf'})} cannot change on resume (the checkpoint's run has "
                             f"{theirs!r}, you passed {mine!r}); drop it, or start a new run from the checkpoint "
                             f"with --init {cfg.resume}")
    need(saved.recipe != "ire-vla", "an ire-vla run cannot be resumed from a checkpoint (its stages write their own "
                                    "runs); start it again")
    check_ray(cfg.ray)
    if "out" not in given:
        cfg.out = str(ck.parent)
    own = Path(cfg.out).expanduser().resolve() == ck.absolute().parent.resolve()
    need(not (own and getattr(cfg, "overwrite", False)), "--overwrite starts a new run; a resumed run continues its "
                                                         "own folder: drop --overwrite (or pass --out NEW_DIR)")
    check_train_out(cfg.out, getattr(cfg, "overwrite", False), fresh=not own)
    return cfg
