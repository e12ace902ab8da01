"""vlaforge observations -> π0 inputs (LeRobot's ``PI0Policy._preprocess_images`` and pi0 processor, on a batch).

* images: uint8 (N, V, H, W, 3) -> per camera float in [0, 1], an optional flip (``image_transform``, the same
  suite conventions as SmolVLA: ``smolvla/obs.py``), resized without distortion to the square
  ``image_resolution`` with CENTRED zero padding (openpi's ``resize_with_pad_torch``; values clamped to [0, 1] after
  the bilinear resize), then mapped to [-1, 1]. vlaforge view ``i`` feeds the checkpoint's ``i``-th image feature;
  every feature the suite lacks is a blank (-1) image masked out of attention, as LeRobot does for missing cameras.
* instruction: newline-terminated, tokenised by PaliGemma's tokenizer, right-padded to ``tokenizer_max_length``
  (48) -- LeRobot's pi0 processor pads to max_length.
* state: normalised by the checkpoint's statistics and zero-padded (by the policy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlaforge.policies.smolvla.obs import flip, tokenize

__all__ = ["images_to_pixels", "resize_with_center_pad", "tokenize"]


def resize_with_center_pad(img: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) in [0, 1] -> (B, C, size, size): bilinear resize keeping the aspect ratio, clamped to [0, 1],
    zero padding split evenly (the odd pixel at the bottom/right)."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(out, (left, size - rw - left, top, size - rh - top), value=0.0)


def images_to_pixels(images: torch.Tensor, n_features: int, size: int, transform: str,
                     device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """uint8 (N, V, H, W, 3) -> ([per feature (N, 3, size, size) in [-1, 1]], [per feature (N,) bool mask])."""
    x = torch.as_tensor(images, device=device)
    n, v = x.shape[:2]
    if v > n_features:
        raise ValueError(f"the observation has {v} camera views but the checkpoint reads {n_features} images")
    x = flip(x.permute(0, 1, 4, 2, 3).float() / 255.0, transform)
    pix = [resize_with_center_pad(x[:, i], size) * 2.0 - 1.0 for i in range(v)]
    masks = [torch.ones(n, dtype=torch.bool, device=x.device) for _ in range(v)]
    for _ in range(n_features - v):
        pix.append(-torch.ones_like(pix[0]))
        masks.append(torch.zeros(n, dtype=torch.bool, device=x.device))
    return pix, masks
