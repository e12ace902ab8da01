"""vlaforge observations -> SmolVLA inputs, with each suite's camera conventions.

What LeRobot's SmolVLA pipeline does to one observation, done here on a batch:

* images: uint8 (N, V, H, W, 3) -> per camera float (N, 3, H, W) in [0, 1], an optional flip
  (``image_transform``), resized without distortion to the checkpoint's
  ``resize_imgs_with_padding`` (w, h) padding on the LEFT and TOP with 0, then mapped to [-1, 1]
  (SigLIP's range). vlaforge view ``i`` feeds the checkpoint's ``i``-th image feature (config
  order); cameras the checkpoint expects but the suite lacks are filled, up to ``empty_cameras``,
  with blank (-1) images masked out of attention, as LeRobot does.
* instruction: the text, ending in a newline, tokenised by the VLM's tokenizer, padded on the right
  ("longest" or "max_length" as the checkpoint's ``pad_language_to``), truncated at
  ``tokenizer_max_length``.
* state: normalised by the checkpoint's statistics (done by the policy), zero-padded to
  ``max_state_dim``.

Camera conventions (``image_transform``): LeRobot's LIBERO data and evaluation feed frames
robosuite renders (rows upside down, OpenGL order) turned by 180 degrees (both axes flipped).
vlaforge's LIBERO frames are upright (``envs/libero.py``), i.e. robosuite's rows flipped back, so
flipping both axes of robosuite's frame equals flipping only the columns of ours: ``"hflip"``.
``"auto"`` picks ``"hflip"`` for checkpoints whose features look like LeRobot's LIBERO layout
(two cameras ``observation.images.image``/``image2``, 8-D state, 7-D action) and ``"none"``
otherwise. The derivation is from the two codebases' documented conventions, not from comparing
rendered frames (no LIBERO checkpoint offline); check one frame before trusting a success rate.
LIBERO's 8-D state (eef position, axis-angle, two finger joints) and 7-D action are the same
layout in both, so they pass through unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSFORMS = ("auto", "none", "hflip", "vflip", "rot180")
LIBERO_IMAGE_KEYS = ("observation.images.image", "observation.images.image2")


def resolve_transform(name: str, image_keys: list[str], state_dim: int, action_dim: int) -> str:
    """``"auto"`` -> a concrete transform for the checkpoint's features (see the module docstring)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown image transform '{name}'; choose one of {', '.join(TRANSFORMS)}")
    if name != "auto":
        return name
    libero = tuple(image_keys) == LIBERO_IMAGE_KEYS and state_dim == 8 and action_dim == 7
    return "hflip" if libero else "none"


def flip(img: torch.Tensor, how: str) -> torch.Tensor:
    """img (..., H, W) -> flipped per ``how``."""
    dims = {"none": (), "hflip": (-1,), "vflip": (-2,), "rot180": (-2, -1)}[how]
    return img.flip(dims) if dims else img


def resize_with_pad(img: torch.Tensor, height: int, width: int, pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, height, width): bilinear resize keeping the aspect ratio, padded left/top."""
    h, w = img.shape[-2:]
    if (h, w) == (height, width):
        return img
    ratio = max(w / width, h / height)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False)
    return F.pad(out, (width - rw, 0, height - rh, 0), value=pad_value)


def images_to_pixels(images: torch.Tensor, n_features: int, empty_cameras: int, size: tuple[int, int],
                     transform: str, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """uint8 (N, V, H, W, 3) -> ([per camera (N, 3, h, w) in [-1, 1]], [per camera (N,) bool mask]).

    ``size`` is LeRobot's ``resize_imgs_with_padding`` (width, height)."""
    x = torch.as_tensor(images, device=device)
    n, v = x.shape[:2]
    if v > n_features:
        raise ValueError(f"the observation has {v} camera views but the checkpoint reads {n_features} images")
    x = x.permute(0, 1, 4, 2, 3).float() / 255.0
    x = flip(x, transform)
    pix, masks = [], []
    for i in range(v):
        p = resize_with_pad(x[:, i], size[1], size[0]) if size else x[:, i]
        pix.append(p * 2.0 - 1.0)
        masks.append(torch.ones(n, dtype=torch.bool, device=x.device))
    for _ in range(min(n_features - v, empty_cameras)):
        pix.append(-torch.ones_like(pix[0]))
        masks.append(torch.zeros(n, dtype=torch.bool, device=x.device))
    return pix, masks


def tokenize(tokenizer, instructions: list[str], max_length: int, padding: str, device):
    """Instructions -> (ids (N, L) long, mask (N, L) bool), newline-terminated, right-padded."""
    texts = [s if s.endswith("\n") else s + "\n" for s in instructions]
    pad = "max_length" if padding == "max_length" else "longest"
    out = tokenizer(texts, max_length=max_length, truncation=True, padding=pad, padding_side="right",
                    return_tensors="pt")
    return out["input_ids"].to(device), out["attention_mask"].to(device).bool()


def pad_vector(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., d) -> (..., size) zero-padded (unchanged when d >= size)."""
    return x if x.shape[-1] >= size else F.pad(x, (0, size - x.shape[-1]))
