"""Suite conventions of OpenVLA checkpoints: how their training data differs from vlaforge's env frames.

``libero`` (OpenVLA and OpenVLA-OFT LIBERO fine-tunes, from their ``run_libero_eval.py``):

* Images. Their data comes from robosuite's ``agentview_image`` / ``robot0_eye_in_hand_image``, which
  are read bottom-up from OpenGL (upright frame flipped vertically), and rotated by 180 degrees
  (``img[::-1, ::-1]``) before the model sees them. vlaforge's LIBERO env renders upright frames
  (``envs/libero.py``), so the same picture is the upright frame mirrored left-right:
  ``rot180(flipud(upright)) = fliplr(upright)``. (Derived from the two code paths; not checked against
  a released checkpoint's success, which needs a GPU.)
* Gripper. Their datasets store the gripper command in [0, 1] with 1 = open, and the statistics' mask
  leaves it un-normalised; at evaluation they map it to [-1, 1], binarise it and flip its sign
  (``normalize_gripper_action(binarize=True)``, ``invert_gripper_action``): env = -sign(2 g - 1),
  LIBERO's -1 = open, +1 = close. The inverse for SFT targets is g = (1 - env) / 2.
* Actions otherwise: LIBERO's 7-D OSC deltas are the datasets' units, so un-normalised actions go to
  the env as they are.

``none``: frames as rendered, actions un-normalised and clipped to [-1, 1].
"""

from __future__ import annotations

import torch

CONVENTIONS = ("none", "libero")


def mirrors(convention: str) -> bool:
    """Whether frames are mirrored left-right before the model sees them."""
    return convention == "libero"


def to_env(a: torch.Tensor, convention: str) -> torch.Tensor:
    """Un-normalised dataset actions (..., A) -> env actions."""
    if convention == "none":
        return a
    g = -torch.sign(2 * a[..., -1:] - 1)
    return torch.cat([a[..., :-1], g], -1)


def to_dataset(a: torch.Tensor, convention: str) -> torch.Tensor:
    """Env actions (..., A) -> dataset units (the inverse of ``to_env`` on binary grippers)."""
    if convention == "none":
        return a
    return torch.cat([a[..., :-1], (1 - a[..., -1:]) / 2], -1)
