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
    from vlaforge.rollout.evaluate import format_table  # noqa: F401  (fail early on a broken install)
    from vlaforge.train.loop import train

    final = train(cfg)
    keys = sorted(k for k in final if k.startswith("eval/"))
    print("final: " + ", ".join(f"{k}={final[k]:.3f}" for k in keys))
    print(f"run directory: {cfg.out}")


def _demo(args):
    from vlaforge.demo import run_demo

    run_demo(args)


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
    args = tyro.cli(cls, args=argv[1:], prog=f"vlaforge {argv[0]}")
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
