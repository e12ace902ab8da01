"""Replay: successful RL trajectories kept as supervised samples (``SuccessBuffer``, iRe-VLA's D_RL) and a
bounded transition buffer for off-policy RL (``ReplayBuffer`` with ``sample_symmetric``, RLPD's 50/50
demo/online batches; ``algos/sac.py``, ``algos/dsrl.py``).

SuccessBuffer:

Rollouts are stored one decision per step, so a sample is the observation at a decision and
the action chunk that was sent from it (masked past the sim steps that actually ran). Batches
are drawn task-balanced — first a task uniformly, then a sample of it — so that easy tasks,
which succeed often and fill the buffer, do not crowd out the hard ones.
"""

from __future__ import annotations

import numpy as np
import torch

from vlaforge.types import Observation, Rollout


class SuccessBuffer:
    """Decision steps of successful, valid episodes: (observation, action chunk, chunk mask)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self.images: list[torch.Tensor] = []
        self.state: list[torch.Tensor] = []
        self.actions: list[torch.Tensor] = []
        self.mask: list[torch.Tensor] = []
        self.task_ids: list[torch.Tensor] = []
        self.instructions: list[str] = []
        self.episodes = 0
        self._cat = None  # the stored lists joined once per change, not once per batch

    def __len__(self) -> int:
        return len(self.instructions)

    def add(self, r: Rollout) -> int:
        """Keep every alive step of the successful, valid episodes of ``r``. Returns steps added."""
        keep = torch.nonzero(r.success & r.valid).flatten()
        added = 0
        C = r.actions.shape[2]
        for n in keep.tolist():
            steps = torch.nonzero(r.alive[:, n]).flatten()
            if len(steps) == 0:
                continue
            self.images.append(r.obs_images[steps, n])
            self.state.append(r.obs_state[steps, n])
            self.actions.append(r.actions[steps, n].float())
            self.mask.append((torch.arange(C)[None] < r.executed[steps, n, None]).float())
            self.task_ids.append(torch.full((len(steps),), int(r.task_id[n]), dtype=torch.int64))
            self.instructions.extend([r.instructions[n]] * len(steps))
            self.episodes += 1
            added += len(steps)
        self._trim()
        self._cat = None
        return added

    def _trim(self) -> None:
        while len(self) > self.capacity and len(self.images) > 1:  # drop the oldest episodes first
            k = len(self.images[0])
            for lst in (self.images, self.state, self.actions, self.mask, self.task_ids):
                lst.pop(0)
            del self.instructions[:k]
            self.episodes -= 1

    def _flat(self):
        if self._cat is None:
            self._cat = (torch.cat(self.images), torch.cat(self.state), torch.cat(self.actions), torch.cat(self.mask),
                         torch.cat(self.task_ids))
        return self._cat

    def batch(self, size: int, gen: torch.Generator) -> tuple[Observation, torch.Tensor, torch.Tensor]:
        """A task-balanced batch: (Observation, actions (B, C, A) env space, mask (B, C))."""
        if len(self) == 0:
            raise ValueError("the success buffer is empty: no successful RL episode was kept")
        images, state, actions, mask, tids = self._flat()
        tasks = torch.unique(tids)
        pick_task = tasks[torch.randint(0, len(tasks), (size,), generator=gen)]
        idx = np.empty(size, dtype=np.int64)
        for t in tasks.tolist():
            rows = torch.nonzero(pick_task == t).flatten()
            pool = torch.nonzero(tids == t).flatten()
            idx[rows.numpy()] = pool[torch.randint(0, len(pool), (len(rows),), generator=gen)].numpy()
        ii = torch.from_numpy(idx)
        obs = Observation(images[ii], state[ii], [self.instructions[i] for i in idx], tids[ii])
        return obs, actions[ii], mask[ii]

    def task_counts(self) -> dict[int, int]:
        if len(self) == 0:
            return {}
        t, c = torch.unique(self._flat()[4], return_counts=True)
        return {int(a): int(b) for a, b in zip(t, c)}


class ReplayBuffer:
    """A bounded ring buffer of transitions stored as preallocated tensors, one per field (off-policy RL).

    Fields are named on the first ``add`` (``{"state": (B, S) float32, "action": (B, D), "reward": (B,), ...}``,
    any dtypes); storage is allocated once for ``capacity`` rows, so memory is bounded by
    ``capacity × bytes_per_transition``; once full the oldest rows are overwritten. ``sample`` draws uniform
    indices from a ``torch.Generator`` (the training loop's checkpointed one), and ``state_dict`` /
    ``load_state_dict`` give a (tensors, JSON) pair that ``algos.state.flatten`` stores in a full-state
    checkpoint: only the filled rows are saved, so a resumed run draws exactly the same batches.

    Bytes per transition are those of the fields' dtypes and shapes (``bytes_per_transition``), measured:
    SAC on state Meta-World (13-D state pair, 1-step chunk, critic on state) 136 B; SAC on a 64×64 vision
    policy with a privileged critic and 4-step chunks 25,000 B (24,576 B of it the uint8 image pair);
    DSRL on the same policy 2,184 B (frozen features instead of images).
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1; got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)  # storage: host memory by default, the policy's device on request
        self.data: dict[str, torch.Tensor] = {}
        self.ptr = 0  # next row to write
        self.size = 0  # filled rows

    def __len__(self) -> int:
        return self.size

    @property
    def bytes_per_transition(self) -> int:
        return sum(v[0].numel() * v.element_size() for v in self.data.values())

    def add(self, fields: dict[str, torch.Tensor]) -> int:
        """Append B transitions (every field with leading dim B); returns B."""
        n = {int(v.shape[0]) for v in fields.values()}
        if len(n) != 1:
            raise ValueError(f"replay fields disagree on the batch size: { {k: tuple(v.shape) for k, v in fields.items()} }")
        b = n.pop()
        if not self.data:
            self.data = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)
                         for k, v in fields.items()}
        elif set(fields) != set(self.data):
            raise ValueError(f"replay fields {sorted(fields)} differ from the stored {sorted(self.data)}")
        if b == 0:
            return 0
        if b > self.capacity:  # only the newest capacity rows survive anyway
            fields = {k: v[b - self.capacity:] for k, v in fields.items()}
            b = self.capacity
        rows = (self.ptr + torch.arange(b)) % self.capacity
        for k, v in fields.items():
            self.data[k][rows] = v.detach().to(self.device, self.data[k].dtype)
        self.ptr = (self.ptr + b) % self.capacity
        self.size = min(self.size + b, self.capacity)
        return b

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """n transitions drawn uniformly with replacement: {field: (n, ...)}."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (n,), generator=generator)
        return {k: v[idx.to(self.device)] for k, v in self.data.items()}

    def state_dict(self) -> dict:
        """Nested dict of tensors and ints for ``algos.state.flatten`` (filled rows only)."""
        return {"capacity": self.capacity, "ptr": self.ptr, "size": self.size,
                "data": {k: v[:self.size].clone() for k, v in self.data.items()},
                "shapes": {k: [list(v.shape[1:]), str(v.dtype).removeprefix("torch.")] for k, v in self.data.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.capacity, self.ptr, self.size = int(d["capacity"]), int(d["ptr"]), int(d["size"])
        self.data = {}
        for k, (shape, dtype) in d["shapes"].items():
            self.data[k] = torch.zeros((self.capacity, *shape), dtype=getattr(torch, dtype), device=self.device)
            self.data[k][:self.size] = d["data"][k].to(self.device)


def sample_symmetric(demos: ReplayBuffer | None, online: ReplayBuffer, n: int,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """RLPD's symmetric sampling: ``n // 2`` transitions from ``demos`` and the rest from ``online``,
    concatenated (demo rows first); all from ``online`` when there are no demos."""
    if demos is None or len(demos) == 0:
        return online.sample(n, generator)
    a, b = demos.sample(n // 2, generator), online.sample(n - n // 2, generator)
    return {k: torch.cat([a[k], b[k]]) for k in b}
