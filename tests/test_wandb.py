"""``--log wandb`` with ``WANDB_MODE=offline``: a run's config, scalars and final per-task table reach a local W&B
run (no network), beside metrics.jsonl; resuming continues the same W&B run."""

from __future__ import annotations

import json

import pytest

wandb = pytest.importorskip("wandb")


def test_train_logs_config_metrics_and_eval_table_to_an_offline_wandb_run(tmp_path, monkeypatch):
    from vlaforge.train.loop import TrainConfig, train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = TrainConfig(algo="rloo", suite="pointreach", tasks="train", iterations=2, groups=2, num_envs=4, max_steps=8,
                      image_size=32, eval_every=2, eval_episodes=2, progress=False, threads=1, log="wandb",
                      out=str(tmp_path / "run"))
    cfg.rloo.group_size = 2
    train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # the run's records (protobuf: keys and string values appear as UTF-8): the config, the scalars
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"rollout/success", b"train/kept_share", b"eval/success_train", b'"rloo"', b"group_size"):
        assert key in records, key
    table = json.loads(next((runs[0] / "files" / "media" / "table" / "eval").glob("per_task_*.table.json")).read_text())
    assert table["columns"] == ["task", "success"] and len(table["data"]) >= 1  # the final per-task eval table
    assert not (tmp_path / "run" / "tb").exists()  # --log wandb: W&B instead of TensorBoard
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3  # the JSONL copy stays


def test_log_wandb_without_the_package_is_refused_before_work(tmp_path, monkeypatch):
    import sys

    from vlaforge.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    out = tmp_path / "never"
    assert main(["train", "--suite", "pointreach", "--tasks", "train", "--iterations", "1", "--log", "wandb",
                 "--out", str(out)]) == 2
    assert not out.exists()


def test_sft_logs_to_wandb_offline(tmp_path, monkeypatch):
    from vlaforge.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["collect", "--suite", "pointreach", "--tasks", "train", "--episodes", "2", "--num-envs", "2",
                 "--out", str(tmp_path / "demos")]) == 0
    assert main(["sft", "--demos", str(tmp_path / "demos"), "--out", str(tmp_path / "sft"), "--sft.steps", "3",
                 "--sft.batch-size", "4", "--threads", "1", "--log", "wandb"]) == 0
    records = list(tmp_path.rglob("run-*.wandb"))
    assert len(records) == 1 and b"sft/loss" in records[0].read_bytes()


def test_eval_logs_its_table_and_videos_to_wandb_offline(tmp_path, monkeypatch):
    from vlaforge.cli import main
    from vlaforge.policies import build_policy, save_policy

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    save_policy(build_policy(state_dim=2, action_dim=2, image_size=32), tmp_path / "pol")
    assert main(["eval", "--checkpoint", str(tmp_path / "pol"), "--suite", "pointreach", "--tasks", "train",
                 "--episodes", "2", "--num-envs", "2", "--threads", "1", "--videos", "1",
                 "--log", "wandb", "--out", str(tmp_path / "ev.json")]) == 0
    run = next((tmp_path / "ev" / "wandb").glob("offline-run-*"))
    media = run / "files" / "media"
    assert list((media / "table" / "eval").glob("per_task_*.table.json")) and list((media / "videos").rglob("*.mp4"))
