"""The two actor roles of a Ray run, as plain classes (``driver.py`` wraps them with ``ray.remote``).

- ``EnvWorker`` owns a vectorised env (``make_vec_env``) and a copy of the policy, and runs the
  local loop's ``collect()`` and evaluation on request. Policy inference therefore happens next to
  the simulator, on the env worker; new weights arrive after every update (``set_weights``).
- ``Learner`` owns a copy of the policy and its optimizer and runs the algorithm's own
  ``update()`` on its shard of the batch. With more than one learner they form a
  ``torch.distributed`` gloo group and ``AllReduceSync`` (passed to ``update(..., sync=)``) averages
  gradients and agrees on skipped steps, so every learner ends each step with identical weights. A
  stateful algorithm's state (``algos.state``) lives here too, one per learner.

Randomness: one torch RNG stream (the one a local run uses) is handed from call to call by the
driver: env worker 0 samples with it, learner 0 updates with it, and its state comes back with
every result. Other workers and learners draw from seeds derived from the run seed and their
inputs. That makes a 1-worker, 1-learner run repeat the local run exactly, and resumable.
"""

from __future__ import annotations

import hashlib
import socket
from datetime import timedelta

import numpy as np
import torch

from vlaforge.algos.common import LOCAL
from vlaforge.device import precision_context, to_host
from vlaforge.envs import make_vec_env
from vlaforge.rollout.collect import CollectStats, collect
from vlaforge.train.learner import PolicyLearner
from vlaforge.train.loop import env_settings, eval_metrics


def set_rng(rng) -> None:
    """``rng`` is a torch RNG state (ByteTensor) to continue, or an int seed."""
    if isinstance(rng, torch.Tensor):
        torch.set_rng_state(rng)
    else:
        torch.manual_seed(int(rng))


def derived_seed(*parts) -> int:
    """A seed that is a pure function of integers (run seed, worker index, env seeds, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class EnvWorker:
    """One role: step a vectorised env with a local copy of the policy."""

    def __init__(self, cfg, policy, weights: dict, index: int):
        torch.set_num_threads(cfg.threads)
        self.cfg, self.index = cfg, index
        self.venv = make_vec_env(cfg.suite, cfg.num_envs, workers=cfg.workers, **env_settings(cfg))
        self.device = actor_device(cfg.ray.env_worker_gpus)  # where this worker's copy of the policy acts
        self.policy = policy.to(self.device)
        self.policy.load_state_dict(weights)

    def ready(self) -> int:
        return self.index

    def collect(self, task_ids: np.ndarray, seeds: np.ndarray, rng):
        """The local ``collect()`` on this worker's envs; returns (Rollout, CollectStats, RNG state)."""
        set_rng(rng)
        stats = CollectStats()
        with precision_context(self.cfg.precision, self.device):
            rollout, _ = collect(self.policy, self.venv, task_ids, seeds, stats=stats, pipeline=self.cfg.pipeline,
                                 temperature=self.cfg.algo_cfg.temperature)
        # a host Rollout crosses to the learners (a batched simulator's is on its GPU: one copy per batch here)
        return rollout.to("cpu"), stats, torch.get_rng_state()

    def evaluate(self, eval_names: list[str], episodes: int, rng):
        set_rng(rng)
        return eval_metrics(self.policy, self.venv, eval_names, episodes), torch.get_rng_state()

    def set_weights(self, weights: dict) -> None:
        self.policy.load_state_dict(weights)

    def close(self) -> None:
        self.venv.close()


def actor_device(gpus: float) -> torch.device:
    """An actor's device: the GPU Ray gave it (visible as cuda:0) when it asked for one, else the CPU."""
    return torch.device("cuda", 0) if gpus > 0 else torch.device("cpu")


class AllReduceSync:
    """``algos.common.LocalSync`` over a process group of ``world`` learners (gloo on the CPU, NCCL on GPUs: every
    tensor it reduces is made on the learners' ``device``)."""

    def __init__(self, world: int, device: torch.device | None = None):
        self.world, self.device = world, device or torch.device("cpu")

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, x: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def grads(self, params) -> None:
        """Average gradients in one flat all-reduce. A parameter with a gradient on any learner gets
        one on all (zeros where it had none), so the optimizer steps the same parameters everywhere."""
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        used = [p for p, h in zip(params, has.tolist()) if h > 0]
        if not used:
            return
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in used])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in used:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


class Learner:
    """One role: run the algorithm's ``update()`` on a shard of each batch (rank ``rank`` of ``world``)."""

    def __init__(self, cfg, policy, weights: dict, rank: int, world: int, opt_state: dict | None,
                 gen_state: torch.Tensor, algo_state: tuple | None = None, spec=None):
        torch.set_num_threads(cfg.threads)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = actor_device(cfg.ray.learner_gpus)
        policy.load_state_dict(weights)
        gen = torch.Generator()
        gen.set_state(gen_state)  # every rank shuffles its own shard with the same permutations
        # the same learning half as LocalBackend's (train/learner.py); init_group gives it the all-reduce sync
        self.learner = PolicyLearner(cfg, policy, opt_state, gen, algo_state, self.device, LOCAL, spec)
        self.policy = self.learner.policy

    def ready(self) -> int:
        return self.rank

    def rendezvous(self) -> str:
        """(rank 0) an address for the other learners to join: this node's IP and a free port."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def init_group(self, url: str, timeout_s: float) -> int:
        import torch.distributed as dist

        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", init_method=url, rank=self.rank,
                                world_size=self.world, timeout=timedelta(seconds=timeout_s))
        self.learner.sync = AllReduceSync(self.world, self.device)
        return self.rank

    def update(self, batch, acfg, iteration: int, rng):
        """The algorithm's own update on this learner's shard; returns (metrics, RNG state)."""
        set_rng(rng)
        metrics = self.learner.update(batch, iteration, acfg)  # the driver's host shard, moved to this device once
        return metrics, torch.get_rng_state()

    def weights(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}

    def train_state(self) -> tuple[dict, dict, torch.Tensor, tuple | None]:
        """(weights, optimizer state, update-generator state, algorithm state or None) for a checkpoint."""
        optimizer, state = self.learner.train_state()
        return (self.weights(), to_host(optimizer.state_dict()), self.learner.gen.get_state(),
                None if state is None else to_host(state.state_dict()))

    def digest(self) -> str:
        """Hash of the weights (tests check that every learner holds the same ones)."""
        h = hashlib.sha256()
        for k, v in self.policy.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
