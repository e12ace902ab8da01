"""Command line: ``vlaforge collect | sft | train | eval | demo``.

Every subcommand's options come from a dataclass (``vlaforge <cmd> --help`` lists them with
their docstrings). Bad input exits with status 2 and one line saying what to do.
"""

from __future__ import annotations

import os
import sys

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
    from vlaforge.recipes import run_recipe
    from vlaforge.train.loop import resumed_config, train

    if cfg.resume:  # a recipe's hooks are rebuilt from the checkpoint's own config
        saved = resumed_config(cfg.resume)
        if saved.recipe:
            saved.resume = cfg.resume
            saved.ray = cfg.ray  # where to run comes from this command line, not the checkpoint
            cfg = saved
    final = run_recipe(cfg) if cfg.recipe else train(cfg)
    keys = sorted(k for k in final if k.startswith("eval/"))
    print("final: " + ", ".join(f"{k}={final[k]:.3f}" for k in keys))
    print(f"run directory: {cfg.out}")


def _demo(args):
    from vlaforge.demo import run_demo

    run_demo(args)


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in ``args`` (None if absent)."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    import tyro

    from vlaforge.demo import DemoArgs
    from vlaforge.distributed import RunFailed
    from vlaforge.envs import EnvError, MissingExtra
    from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs
    from vlaforge.policies import CheckpointError
    from vlaforge.train.loop import TrainConfig

    commands = {
        "collect": (CollectArgs, _collect),
        "sft": (SFTArgs, _sft),
        "train": (TrainConfig, _train),
        "eval": (EvalArgs, _eval),
        "demo": (DemoArgs, _demo),
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
    if argv[0] == "train" and (name := _flag_value(argv[1:], "--recipe")):
        from vlaforge.recipes import recipe_defaults

        try:
            default = recipe_defaults(name)
        except ValueError as e:
            print(f"vlaforge train: error: {e}", file=sys.stderr)
            return 2
    args = tyro.cli(cls, args=argv[1:], prog=f"vlaforge {argv[0]}", default=default)
    try:
        fn(args)
    except (EnvError, CheckpointError, MissingExtra, ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"vlaforge {argv[0]}: error: {msg}", file=sys.stderr)
        return 2
    except RunFailed as e:  # a Ray run broke down (dead learner, ...): the message names the checkpoint
        print(f"vlaforge {argv[0]}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
