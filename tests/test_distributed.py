"""Ray scale-out (vlaforge.distributed): equivalence with the local loop, data-parallel learners,
env-worker and learner faults, resume, and the missing-extra message.

One local Ray cluster (2 CPUs, actors with half a CPU each) serves the whole module.
"""

import json
import os
import sys

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from vlaforge.algos.common import StepBatch  # noqa: E402
from vlaforge.algos.ppo import PPOConfig  # noqa: E402
from vlaforge.algos.tpo import PairBatch  # noqa: E402
from vlaforge.distributed import RayConfig, RunFailed  # noqa: E402
from vlaforge.distributed.driver import Cluster, merge_learner_metrics, per_learner_config, shard_batch  # noqa: E402
from vlaforge.train.loop import TrainConfig, train  # noqa: E402

PRIV = {"radius": 0.2, "privileged": 1.0}
HALF = dict(enabled=True, env_worker_cpus=0.5, learner_cpus=0.5)


def _cfg(out, **kw):
    cfg = TrainConfig(algo="ppo", suite="pointreach", backbone="state", env_kwargs=PRIV, groups=4, num_envs=8,
                      iterations=2, eval_every=2, eval_episodes=2, progress=False, tensorboard=False, out=str(out),
                      threads=1, lr=1e-3, **kw)
    cfg.ppo.group_size = 4
    cfg.ppo.minibatch_size = 32
    cfg.ppo.critic_warmup = 1
    return cfg


def _rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(path) -> dict:
    from vlaforge.policies import load_policy

    return load_policy(path).state_dict()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _batch(n: int) -> StepBatch:
    return StepBatch(images=torch.zeros(n, 1, 2, 2, 3, dtype=torch.uint8), state=torch.arange(n).float()[:, None],
                     instructions=[str(i) for i in range(n)], task_ids=torch.zeros(n, dtype=torch.long),
                     taken={"x": torch.arange(n)}, actions=torch.zeros(n, 1, 2), chunk_mask=torch.ones(n, 1, dtype=torch.bool),
                     logp_old=torch.zeros(n, 1, 2), v_old=torch.zeros(n), adv=torch.arange(n).float(),
                     returns=torch.zeros(n), episode=torch.arange(n), t=torch.zeros(n, dtype=torch.long))


def test_shards_are_equal_disjoint_and_minibatches_divided():
    shards, dropped = shard_batch(_batch(11), 3)
    assert [len(s) for s in shards] == [3, 3, 3] and dropped == 2
    seen = torch.cat([s.adv for s in shards])
    assert len(set(seen.tolist())) == 9 and all(s.instructions == [str(int(a)) for a in s.adv] for s in shards)
    assert shard_batch(b := _batch(5), 1) == ([b], 0)
    tiny, dropped = shard_batch(_batch(1), 2)  # fewer steps than learners: empty shards, no error
    assert [len(s) for s in tiny] == [0, 0] and dropped == 1
    pairs, _ = shard_batch(PairBatch(None, torch.arange(5), torch.arange(5) + 10), 2)
    assert [p.chosen.tolist() for p in pairs] == [[0, 2], [1, 3]] and [p.rejected.tolist() for p in pairs] == [[10, 12], [11, 13]]
    assert per_learner_config(PPOConfig(minibatch_size=256), 3).minibatch_size == 86
    assert per_learner_config(PPOConfig(minibatch_size=256), 1).minibatch_size == 256
    m = merge_learner_metrics([{"train/loss": 1.0, "train/batch_steps": 3}, {"train/loss": 3.0, "train/batch_steps": 4}])
    assert m == {"train/loss": 2.0, "train/batch_steps": 7}


def test_ray_flag_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    from vlaforge.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = main(["train", "--ray", "--iterations", "1", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pip install 'vlaforge[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _kill_learner_at(monkeypatch, at: int) -> None:
    """Kill learner 0 as the update of iteration `at` (0-based) is sent to it."""
    update = Cluster.update

    def killing_update(self, batch, acfg, it):
        if it == at:
            self.ray.kill(self.learners[0])
        return update(self, batch, acfg, it)

    monkeypatch.setattr(Cluster, "update", killing_update)


@pytest.mark.timeout(180)
def test_one_worker_one_learner_matches_local_run_and_resumes_after_learner_death(tmp_path, ray_cluster,
                                                                                  monkeypatch):
    """Learner death in iteration 2 stops the run with the iteration-1 checkpoint intact; `--resume --ray`
    finishes it; every logged metric and the final weights equal an uninterrupted local run's."""
    from vlaforge.cli import main
    from vlaforge.train.checkpoint import load_checkpoint

    train(_cfg(tmp_path / "local"))
    run = tmp_path / "ray"
    with pytest.raises(RunFailed, match=r"learner died during the update of iteration 2.*iteration 1\); resume with"):
        with monkeypatch.context() as m:
            _kill_learner_at(m, 1)
            train(_cfg(run, ray=RayConfig(**HALF)))
    assert load_checkpoint(run / "checkpoint")[2]["iteration"] == 1
    rc = main(["train", "--resume", str(run / "checkpoint"), "--ray", "--ray.env-worker-cpus", "0.5",
               "--ray.learner-cpus", "0.5"])
    assert rc == 0
    local, ray_rows = _rows(tmp_path / "local"), _rows(run)
    assert [r["step"] for r in ray_rows] == [0, 1, 2]
    assert local[1]["train/optimizer_steps"] > 0 and local[2]["train/optimizer_steps"] > 0
    for a, b in zip(local, ray_rows):
        assert {k: v for k, v in a.items() if not k.startswith("time/")} == \
               {k: b[k] for k in a if not k.startswith("time/")}
    wa, wb = _weights(tmp_path / "local" / "final"), _weights(run / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class _KillWorkerAndWatchLearners:
    """Kill env worker 1 as the collection of iteration 1 is sent to it; record the learners' weight digests
    after each weight sync."""

    def __init__(self, monkeypatch):
        self.digests, self.killed = [], False
        collect, sync = Cluster.collect, Cluster.sync_weights

        def killing_collect(cluster, task_ids, seeds, stats):
            if not self.killed:
                self.killed = True
                cluster.ray.kill(cluster.workers[1])
            return collect(cluster, task_ids, seeds, stats)

        def watched_sync(cluster):
            sync(cluster)
            self.digests.append(cluster.ray.get([lr.digest.remote() for lr in cluster.learners]))

        monkeypatch.setattr(Cluster, "collect", killing_collect)
        monkeypatch.setattr(Cluster, "sync_weights", watched_sync)


@pytest.mark.timeout(180)
def test_two_workers_two_learners_recover_from_a_killed_env_worker(tmp_path, ray_cluster, monkeypatch):
    hooks = _KillWorkerAndWatchLearners(monkeypatch)
    cfg = _cfg(tmp_path / "run", ray=RayConfig(env_workers=2, learners=2, **HALF))
    cfg.ppo.critic_warmup = 0
    train(cfg)
    rows = _rows(tmp_path / "run")
    it1, it2 = rows[1], rows[2]
    # iteration 1: worker 1's two groups (8 episodes) were lost mid-collection and are not counted
    assert it1["ray/env_workers_replaced"] == 1 and it1["rollout/discarded_episodes"] == 8
    assert it1["rollout/groups_kept"] == 2 and it1["train/batch_steps"] > 0
    # iteration 2: the replacement worker collects its share again
    assert it2["ray/env_workers_replaced"] == 0 and it2["rollout/discarded_episodes"] == 0
    assert it2["rollout/groups_kept"] == 4
    assert it1["train/optimizer_steps"] > 0 and it2["train/optimizer_steps"] > 0
    # data-parallel learners hold identical weights after every update, and the weights moved
    assert len(hooks.digests) == 2 and all(d[0] == d[1] for d in hooks.digests)
    assert hooks.digests[0][0] != hooks.digests[1][0]
    assert "eval/success_train" in it2 and (tmp_path / "run" / "final" / "model.safetensors").exists()
