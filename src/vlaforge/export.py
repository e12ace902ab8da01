"""``vlaforge export RUN --to lerobot|hf|peft --out DIR``: a trained policy as a folder the family's own tools load,
with a model card (README.md) naming the training command, the data, the seeds and the measured success.

| family | ``--to lerobot`` | ``--to hf`` | ``--to peft`` |
| --- | --- | --- | --- |
| smolvla | LeRobot's SmolVLA layout (LoRA merged) | – | – |
| hf (a local Hugging Face VLM) | – | a plain transformers model, LoRA merged (+ ``vlaforge_heads.safetensors``) | the LoRA adapter (peft layout) |
| openvla, openvla-oft | – | the released Prismatic layout (``config.json``, sharded safetensors, tokenizer; OFT's ``action_head`` / ``proprio_projector`` files); full fine-tunes only | – |
| tiny | – | – | – (no loader outside vlaforge: share the run folder) |

RUN is a run folder (its ``final/`` is exported) or a policy folder. The export is written atomically; ``--out`` must
not hold files already. Checked before any work (``ExportArgs.check``).

    vlaforge export runs/smolvla --to lerobot --out exports/smolvla-libero
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from vlaforge.errors import CheckpointError, UsageError
from vlaforge.fsutil import atomic_dir
from vlaforge.policies import load_policy, read_config
from vlaforge.train.config import TrainConfig, config_to_dict

Target = Literal["lerobot", "hf", "peft"]


@dataclass
class ExportArgs:
    """Export a trained policy for the family's own tools (LeRobot, transformers, peft), with a model card."""

    run: Annotated[str, tyro.conf.Positional]
    """run folder (its final/ policy is exported) or a policy folder"""
    to: Target = "hf"
    """lerobot (SmolVLA) | hf (hf VLMs merged, OpenVLA/OFT in the released layout) | peft (hf VLMs with LoRA)"""
    out: str = "exports/policy"
    """output folder (written atomically; must be absent or empty)"""

    def policy_dir(self) -> Path:
        run = Path(self.run)
        for cand in (run / "final", run):
            if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
                return cand
        raise UsageError(f"'{self.run}' holds no policy (neither final/ nor config.json + model.safetensors); pass a "
                         "run folder of `vlaforge train`/`demo` or a policy folder of `vlaforge sft`")

    def check(self) -> tuple[Path, str]:
        """(policy folder, family) or a one-line ``UsageError`` before any work."""
        pol = self.policy_dir()
        family = read_config(pol)["policy"].get("family", "tiny")
        if (family, self.to) not in EXPORTERS:
            can = [t for f, t in EXPORTERS if f == family]
            hint = (f"this family exports with --to {' or --to '.join(can)}" if can else
                    "the tiny VLA has no loader outside vlaforge; share the run folder (vlaforge eval --checkpoint "
                    "loads it)")
            raise UsageError(f"--to {self.to}: a '{family}' policy cannot be exported so; {hint}")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out '{out}' exists and is not an empty folder; choose a new folder")
        if out.resolve() == pol.resolve() or pol.resolve() in out.resolve().parents:
            raise UsageError(f"--out '{out}' is inside the exported policy '{pol}'; choose a folder outside it")
        return pol, family


# -- the writers: (policy, empty folder) -> None ---------------------------------------------------------

def _lerobot(policy, d: Path) -> None:
    from vlaforge.policies.smolvla import export_lerobot

    _into(d, lambda p: export_lerobot(policy, p))


def _lerobot_pi0(policy, d: Path) -> None:
    from vlaforge.policies.pi0 import export_lerobot

    _into(d, lambda p: export_lerobot(policy, p))


def _hf_merged(policy, d: Path) -> None:
    from vlaforge.policies.hf.export import export_merged

    _into(d, lambda p: export_merged(policy, p))


def _peft(policy, d: Path) -> None:
    from vlaforge.policies.hf.export import save_adapter

    if policy.cfg.lora_rank <= 0:
        raise UsageError("--to peft needs a LoRA policy (trained with --policy.lora-rank N); use --to hf for the "
                         "full model")
    _into(d, lambda p: save_adapter(policy, p))


def _prismatic(policy, d: Path) -> None:
    """OpenVLA / OpenVLA-OFT in the released layout (what ``--policy openvla[-oft] --policy.path`` and the released
    loaders read)."""
    from safetensors.torch import save_file

    from vlaforge.policies.openvla.prismatic import write_prismatic

    if policy.cfg.lora_rank > 0:
        raise UsageError("--to hf for OpenVLA writes full weights: this policy was trained with LoRA, whose merge into "
                         "the released layout is not built; export a full fine-tune, or share the run folder")
    write_prismatic(policy.vlm, policy.pcfg, d, state=policy.released_state_dict())
    src = Path(policy.cfg.path).expanduser()
    for f in src.iterdir():  # tokenizer, processor config, statistics
        if f.is_file() and not f.name.startswith(("model", "config.json", "action_head", "proprio_projector")):
            shutil.copy2(f, d / f.name)
    if policy.cfg.oft:  # OFT's own components, under the released file names and DDP key names
        parts = {"action_head": policy.action_head, "proprio_projector": getattr(policy, "proprio_projector", None)}
        for name, mod in parts.items():
            if mod is not None:
                save_file({f"module.{k}": v.detach().float().cpu().contiguous() for k, v in mod.state_dict().items()},
                          str(d / f"{name}--1_checkpoint.safetensors"))


def _into(d: Path, write: Callable[[Path], Path]) -> None:
    """Run a writer that writes a whole folder atomically, into ``d`` (an empty temp folder)."""
    tmp = d / ".part"
    write(tmp)
    for f in tmp.iterdir():
        f.rename(d / f.name)
    tmp.rmdir()


EXPORTERS: dict[tuple[str, str], Callable] = {
    ("smolvla", "lerobot"): _lerobot,
    ("pi0", "lerobot"): _lerobot_pi0,
    ("hf", "hf"): _hf_merged,
    ("hf", "peft"): _peft,
    ("openvla", "hf"): _prismatic,
    ("openvla-oft", "hf"): _prismatic,
}


# -- the model card ----------------------------------------------------------------------------------

def _train_command(cfg: dict) -> str:
    """The ``vlaforge train`` command of a saved config: the options that differ from the defaults."""
    default = config_to_dict(TrainConfig(algo=cfg.get("algo", "rloo")))
    skip = {"out", "resume", "progress", "tensorboard", "threads", "algo", "recipe"}
    parts = [f"--recipe {cfg['recipe']}" if cfg.get("recipe") else f"--algo {cfg.get('algo')}"]
    for k, v in cfg.items():
        if k in skip or k not in default:
            continue
        if isinstance(v, dict):
            if k not in (cfg.get("algo"), "hf", "openvla", "ray"):
                continue
            for sk, sv in v.items():
                if default[k].get(sk) != sv:
                    parts.append(f"--{k.replace('_', '-') if k != 'hf' else 'policy'}.{sk.replace('_', '-')} {sv}")
        elif default[k] != v:
            parts.append(f"--{k.replace('_', '-')} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return "vlaforge train " + " ".join(parts)


def _manifests(run: Path, pol: Path) -> list[tuple[Path, dict]]:
    out = []
    for d in dict.fromkeys([pol, run, run / "final", run / "rl" / "final"]):
        for f in sorted(Path(d).glob("eval_*.json")) if Path(d).is_dir() else []:
            try:
                out.append((f, json.loads(f.read_text())))
            except (OSError, ValueError):
                continue
    return out


def model_card(run: Path, pol: Path, family: str, to: str) -> str:
    """README.md of an export: what was trained, how, on what, with which seeds, and how well (eval manifests)."""
    meta = read_config(pol)
    lines = [f"# {family} policy exported by vlaforge (`--to {to}`)", ""]
    cfg_file = next((p for p in (run / "train_config.json", run / "checkpoint" / "state.json") if p.is_file()), None)
    cfg = None
    if cfg_file is not None:
        raw = json.loads(cfg_file.read_text())
        cfg = raw.get("config", raw) if cfg_file.name == "state.json" else raw
    lines += ["## Training", ""]
    if cfg is not None:
        lines += [f"- method: `{cfg.get('recipe') or cfg.get('algo')}` ({cfg.get('iterations')} iterations of "
                  f"{cfg.get('groups')} groups) on suite `{cfg.get('suite')}`, tasks `{cfg.get('tasks')}`",
                  f"- started from: `{cfg.get('init') or 'a fresh policy'}`",
                  f"- training seed: {cfg.get('seed')} (training rollouts use seeds below 1,000,000)",
                  "- command:", "", "```bash", _train_command(cfg), "```", ""]
    else:
        lines += ["- no training config in this folder (an SFT or hand-made policy)", ""]
    trained_on = meta.get("trained_on")
    if trained_on is None and cfg is not None and cfg.get("init"):  # RL from an SFT policy: its demos
        try:
            trained_on = read_config(cfg["init"]).get("trained_on")
        except (OSError, ValueError, CheckpointError):  # the init folder may be gone: the card says so below
            trained_on = None
    lines += ["## Data", ""]
    lines += ([f"- supervised on demos `{trained_on.get('demos')}` (suite `{trained_on.get('suite')}`, "
               f"{trained_on.get('frames')} frames, {trained_on.get('steps')} steps)"] if trained_on else
              ["- this policy file records no demonstration set (see the init checkpoint's card)"])
    lines += ["", "## Evaluation", ""]
    mans = _manifests(run, pol)
    if not mans:
        lines += ["No evaluation manifest was found: measure it with `vlaforge eval --checkpoint <this run>/final "
                  "--episodes 50` before quoting a success rate."]
    for f, m in mans:
        seeds = m.get("seeds", {})
        lines += [f"`{f.name}` (suite `{m.get('suite')}`, {m.get('episodes_per_task')} episodes per task on seeds "
                  f"{seeds.get('base')}..{seeds.get('base', 0) + seeds.get('count', 1) - 1}, disjoint from training; "
                  f"policy sha256/16 `{m.get('checkpoint_sha256_16')}`):", "",
                  "| task | success | 95% Wilson interval |", "| --- | --- | --- |"]
        for t in m.get("results", []) + ([dict(task="overall", **m["overall"])] if "overall" in m else []):
            lo, hi = t.get("ci95", [0.0, 0.0])
            lines.append(f"| {t.get('task')} | {t.get('successes')}/{t.get('episodes')} | [{lo:.2f}, {hi:.2f}] |")
        lines.append("")
    lines += ["## Loading", "", {"lerobot": "LeRobot's `SmolVLAPolicy.from_pretrained(DIR)`, or "
                                             "`vlaforge eval --checkpoint DIR`.",
                                 "hf": "transformers' `from_pretrained(DIR)` (OpenVLA: the released Prismatic layout, "
                                       "`--policy openvla[-oft] --policy.path DIR` in vlaforge).",
                                 "peft": "peft's `PeftModel.from_pretrained(base_model, DIR)`."}[to], ""]
    return "\n".join(lines)


def run_export(a: ExportArgs, quiet: bool = False) -> Path:
    pol, family = a.check()
    policy = load_policy(pol)
    with atomic_dir(Path(a.out)) as tmp:
        EXPORTERS[(family, a.to)](policy, tmp)
        (tmp / "README.md").write_text(model_card(Path(a.run), pol, family, a.to))
        (tmp / "vlaforge_export.json").write_text(json.dumps({"source": str(pol), "family": family, "to": a.to,
                                                              "args": dataclasses.asdict(a)}, indent=2))
    if not quiet:
        print(f"exported {family} ({pol}) as {a.to} to {a.out}")
    return Path(a.out)
