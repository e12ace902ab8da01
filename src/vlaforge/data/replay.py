"""Successful RL trajectories kept as supervised samples (iRe-VLA's D_RL).

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
