"""Command line: ``vlaforge collect | sft | train | eval | demo | export``.

Every subcommand's options come from a dataclass (``vlaforge <cmd> --help`` lists them with
their docstrings). ``vlaforge.validate.check`` runs first, before any env is built or file written.
Bad input (``UsageError``, ``EnvError``, ``CheckpointError``, ``MissingExtra``) exits with status 2
and one line saying what to do; a diverged run (``NonFiniteError``) or a broken-down Ray run exits 1
with one line naming the last good checkpoint; anything else is a bug and keeps its traceback.

``train``, ``sft``, ``collect`` and ``demo`` hold the lock of their output for the whole run
(``vlaforge.runlock``): a second run into the same folder is refused in one line. SIGTERM is handled
like Ctrl-C (``KeyboardInterrupt``: the checkpoint stays intact, env workers are closed, temp folders
removed); the exit status is then 143 (130 for Ctrl-C).

    vlaforge train --resume runs/rl/checkpoint    # writes into runs/rl (the checkpoint's parent)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def _collect(args):
    from vlaforge.pipeline import run_collect

    run_collect(args)


def _sft(args):
    from vlaforge.pipeline import run_sft

    run_sft(args)


def _eval(args):
    from vlaforge.pipeline import run_eval

    run_eval(args)


def _train(cfg):
    """``cfg``: the checked config; on ``--resume`` already the run's own (``validate`` resolved it with
    ``train.resume.resume_point``), so a recipe's hooks are rebuilt from the checkpoint's settings."""
    from vlaforge.recipes import run_recipe
    from vlaforge.rollout.evaluate import protocol_line
    from vlaforge.train.loop import train

    if cfg.algo == "distill" and cfg.distill.teachers_cache and not cfg.resume:
        from vlaforge.pipeline import distill_teachers

        cfg = distill_teachers(cfg)  # each task's teacher built or reused in the cache; worse-than-student ones skipped
    final = run_recipe(cfg) if cfg.recipe else train(cfg)
    keys = sorted(k for k in final if k.startswith("eval/"))
    if keys:
        print("final: " + ", ".join(f"{k}={final[k]:.3f}" for k in keys))
        print("  " + protocol_line(cfg.eval_episodes))
    lost = _lost_episodes(Path(cfg.out) / "metrics.jsonl")
    if lost:
        print(f"warning: {lost} training episodes were lost to crashed env workers (restarted; the episodes were "
              "dropped from the updates); see rollout/invalid_episodes in metrics.jsonl", file=sys.stderr)
    print(f"run directory: {cfg.out}")


def _lost_episodes(path: Path) -> int:
    n = 0
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                n += int(json.loads(line).get("rollout/invalid_episodes", 0))
            except (ValueError, AttributeError, TypeError):
                pass
    return n


def _demo(args):
    from vlaforge.demo import run_demo

    run_demo(args)


def _export(args):
    from vlaforge.export import run_export

    run_export(args)


@functools.cache
def train_command_class():
    """``TrainConfig`` plus the command-line-only ``--overwrite`` (never saved in a checkpoint's config)."""
    from vlaforge.train.loop import TrainConfig

    @dataclasses.dataclass
    class TrainCommand(TrainConfig):
        __doc__ = TrainConfig.__doc__

        overwrite: bool = False
        """replace an earlier run in --out (deletes its checkpoint/, final/, metrics.jsonl, tb/ ... first)"""

    return TrainCommand


def _train_config(args):
    """The ``TrainConfig`` of a parsed ``TrainCommand`` (without ``overwrite``)."""
    from vlaforge.train.loop import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


@contextlib.contextmanager
def _owned_output(command: str, args):
    """Hold the lock of the command's output for the whole run (``vlaforge.runlock``); ``--overwrite`` clears an
    earlier training run in it, under the lock. ``train --resume`` locks the checkpoint's run folder too."""
    from vlaforge.runlock import RunLock, check_target, clear_train_run, lock_path

    if command not in ("train", "sft", "collect", "demo"):
        yield
        return
    out = Path(args.out).expanduser().absolute()
    overwrite = bool(getattr(args, "overwrite", False))
    with contextlib.ExitStack() as stack:
        own_run = False
        if command == "train" and args.resume:
            run = Path(args.resume).expanduser().absolute().parent
            stack.enter_context(RunLock(lock_path("train", run), "train", "--resume", run))
            own_run = run.resolve() == out.resolve()
        if not own_run:
            stack.enter_context(RunLock(lock_path(command, out), command, "--out", args.out))
            check_target(command, args.out, overwrite)  # again, now that no one else can write there
            if command == "train" and overwrite:
                clear_train_run(out)
        yield


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so that every cleanup of Ctrl-C runs."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises ``_Terminated`` (a KeyboardInterrupt) once; a second one during the
    cleanup is ignored. Only in the main thread (signal handlers live there)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in ``args`` (None if absent)."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


_BOX = "│╭╮╰╯─┃━┏┓┗┛ "


def _parse_error_line(text: str) -> str:
    """One line of tyro's boxed parse error: its title and the first paragraph (a wrapped message joined)."""
    lines = [ln.strip(_BOX) for ln in text.splitlines()]
    out: list[str] = []
    for raw, ln in zip(text.splitlines(), lines):
        if not ln:
            if out and "─" in raw:  # the rule under the first paragraph
                break
            continue
        out.append(ln)
    if not out:
        return "invalid arguments"
    if len(out) > 1 and out[1].lower().startswith(out[0].lower()):  # "Unrecognized options: Unrecognized ..."
        out = out[1:]
    return out[0] + (": " + " ".join(out[1:]) if len(out) > 1 else "")


def _parse_args(cls, args: list[str], prog: str, default):
    """``tyro.cli``; a parse error (a value of the wrong type, an unknown flag) becomes a one-line ``UsageError``
    instead of tyro's boxed message and ``SystemExit`` (``--help`` is printed as it is)."""
    import io

    import tyro

    from vlaforge.errors import UsageError

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            parsed = tyro.cli(cls, args=args, prog=prog, default=default)
        sys.stderr.write(buf.getvalue())  # warnings tyro printed are kept
        return parsed
    except SystemExit as e:
        if e.code in (0, None):
            sys.stderr.write(buf.getvalue())
            raise
        raise UsageError(f"{_parse_error_line(buf.getvalue())} (see {prog} --help)") from None


def main(argv: list[str] | None = None) -> int:
    from vlaforge.demo import DemoArgs
    from vlaforge.distributed import RunFailed
    from vlaforge.envs import EnvError, MissingExtra
    from vlaforge.errors import CheckpointError, NonFiniteError, UsageError
    from vlaforge.export import ExportArgs
    from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs
    from vlaforge.train.loop import TrainConfig
    from vlaforge.validate import check

    commands = {
        "collect": (CollectArgs, _collect),
        "sft": (SFTArgs, _sft),
        "train": (train_command_class(), _train),
        "eval": (EvalArgs, _eval),
        "demo": (DemoArgs, _demo),
        "export": (ExportArgs, _export),
    }
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"vlaforge: unknown command '{argv[0]}'; choose one of: {', '.join(commands)}", file=sys.stderr)
            return 2
        print("usage: vlaforge {" + ",".join(commands) + "} [--help] [options]")
        for name, (cls, _) in commands.items():
            print(f"  {name:<8} {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    cls, fn = commands[argv[0]]
    if argv[0] == "train":  # `--ray` is short for `--ray.enabled`
        argv = [("--ray.enabled" if a == "--ray" else a) for a in argv]
    default = None
    user_errors = (UsageError, EnvError, CheckpointError, MissingExtra)
    try:
        if argv[0] == "train" and (name := _flag_value(argv[1:], "--recipe")):
            from vlaforge.recipes import RECIPES, recipe_defaults

            if name not in RECIPES:
                raise UsageError(f"--recipe: unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
            d = recipe_defaults(name)
            default = cls(**{f.name: getattr(d, f.name) for f in dataclasses.fields(TrainConfig)})
        with _sigterm_as_interrupt():
            args = _parse_args(cls, argv[1:], f"vlaforge {argv[0]}", default)
            args = check(argv[0], args, argv[1:])  # every check before any work or any file written
            with _owned_output(argv[0], args):
                fn(_train_config(args) if argv[0] == "train" else args)
    except user_errors as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"vlaforge {argv[0]}: error: {msg}", file=sys.stderr)
        return 2
    except (NonFiniteError, RunFailed) as e:  # a run broke down: the message names the last good checkpoint
        print(f"vlaforge {argv[0]}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
