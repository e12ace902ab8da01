"""Observation -> model inputs for a Hugging Face VLM, as an explicit list of steps.

    1. images   uint8 (N, V, H, W, 3) -> N*V HxWx3 arrays (sample-major, view-minor)
    2. pixels   the checkpoint's own image processor (resize, rescale, normalise, patchify)
    3. prompts  per sample: the family's image placeholders (one block per view), BOS, then
                ``prompt`` filled with the instruction and the state written as signed decimals
    4. tokens   the checkpoint's tokenizer, no special tokens added, left-padded to a FIXED
                length (image tokens + ``max_text_tokens``); a longer prompt is an error
    5. extras   family tensors: PaliGemma ``token_type_ids`` (0 = prefix), Qwen2-VL
                ``mm_token_type_ids`` (1 on image tokens) next to ``image_grid_thw``

Fixed-length left padding makes every sample's computation independent of which other samples
share its batch (positions and padding are the same in the rollout and in any learner
minibatch), so the learner re-scores exactly what the rollout sampled. Action tokens (binned
head) are appended after the prompt by ``append_tokens``.

Differences from the reference processors: we build placeholders ourselves instead of calling
the family's ``*Processor`` (Qwen2-VL's cannot be built without torchvision in transformers 5),
we never tile images (one global view per camera, as SmolVLM at low resolution), and the robot
state enters as text (as π0-FAST writes discretised state into the prompt), so no new
embedding is grafted onto the model.
"""

from __future__ import annotations

import numpy as np
import torch

from vlaforge.errors import UsageError
from vlaforge.policies.hf.families import (
    Family,
    image_placeholder,
    image_processor_kwargs,
    image_tokens,
    required_tokens,
)
from vlaforge.types import Observation

PIXEL_KEYS = ("pixel_values", "pixel_attention_mask", "image_grid_thw")


class ObsProcessor:
    def __init__(self, family: Family, config, tokenizer, image_processor, max_text_tokens: int = 128,
                 prompt: str = "{instruction}\nstate: {state}\naction:", state_decimals: int = 2):
        self.family, self.config = family, config
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.max_text_tokens, self.prompt, self.decimals = max_text_tokens, prompt, state_decimals
        vocab = tokenizer.get_vocab()
        missing = [t for t in required_tokens(family) if t not in vocab]
        if missing:
            raise UsageError(f"the tokenizer lacks the {family.name} special tokens {missing}; "
                             "load the tokenizer saved with this checkpoint")
        if tokenizer.pad_token_id is None:
            raise UsageError("the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token) "
                             "and save it next to the model")
        self.image_token_id = tokenizer.convert_tokens_to_ids(family.image_token)
        self._text_cache: dict[str, list[int]] = {}

    # -- the steps ---------------------------------------------------------------------------
    @staticmethod
    def step_images(obs: Observation) -> list[np.ndarray]:
        img = obs.images.cpu().numpy() if isinstance(obs.images, torch.Tensor) else np.asarray(obs.images)
        assert img.ndim == 5 and img.shape[-1] == 3, f"images must be (N, V, H, W, 3), got {img.shape}"
        return [img[n, v] for n in range(img.shape[0]) for v in range(img.shape[1])]

    def step_pixels(self, images: list[np.ndarray], views: int) -> dict:
        if self.family.name == "idefics3":  # nested per sample: (N, V, 3, H, W)
            images = [images[i:i + views] for i in range(0, len(images), views)]
        out = self.image_processor(images=images, return_tensors="pt", **image_processor_kwargs(self.family))
        return {k: out[k] for k in PIXEL_KEYS if k in out}

    def state_text(self, state) -> str:
        return " ".join(f"{float(x):+.{self.decimals}f}" for x in state)

    def step_prompts(self, obs: Observation, pixels: dict, views: int) -> tuple[list[str], list[str]]:
        """(image part, text part) of each sample's prompt."""
        bos = self.tokenizer.bos_token or ""
        state = obs.state.cpu().numpy() if isinstance(obs.state, torch.Tensor) else np.asarray(obs.state)
        image_parts, text_parts = [], []
        for n, instr in enumerate(obs.instructions):
            blocks = [image_placeholder(self.family, image_tokens(self.family, self.config, pixels, n * views + v),
                                        self.tokenizer) for v in range(views)]
            image_parts.append("".join(blocks))
            text_parts.append(bos + self.prompt.format(instruction=instr, state=self.state_text(state[n])))
        return image_parts, text_parts

    def _encode(self, s: str) -> list[int]:
        ids = self._text_cache.get(s)
        if ids is None:
            ids = self.tokenizer(s, add_special_tokens=False)["input_ids"]
            if len(self._text_cache) < 4096:
                self._text_cache[s] = ids
        return ids

    def step_tokens(self, image_parts: list[str], text_parts: list[str]) -> dict:
        rows = []
        for img_s, txt_s in zip(image_parts, text_parts):
            txt = self.tokenizer(txt_s, add_special_tokens=False)["input_ids"]
            if len(txt) > self.max_text_tokens:
                raise UsageError(f"prompt has {len(txt)} text tokens, more than max_text_tokens={self.max_text_tokens}; "
                                 "raise --policy.max-text-tokens or shorten the instruction")
            ids = self._encode(img_s)
            rows.append((ids, txt))
        length = max(len(i) for i, _ in rows) + self.max_text_tokens
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for n, (i, t) in enumerate(rows):
            seq = i + t
            input_ids[n, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[n, length - len(seq):] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def step_extras(self, text: dict, pixels: dict) -> dict:
        out = {**text, **pixels}
        if self.family.prefix_lm:
            out["token_type_ids"] = torch.zeros_like(text["input_ids"])
        if self.family.mrope:
            out["mm_token_type_ids"] = (text["input_ids"] == self.image_token_id).long()
        return out

    def __call__(self, obs: Observation, device=None, dtype=None) -> dict:
        views = int(obs.images.shape[1])
        images = self.step_images(obs)
        pixels = self.step_pixels(images, views)
        image_parts, text_parts = self.step_prompts(obs, pixels, views)
        inputs = self.step_extras(self.step_tokens(image_parts, text_parts), pixels)
        return {k: (v.to(device=device, dtype=dtype) if k == "pixel_values" and dtype is not None else v.to(device))
                for k, v in inputs.items()}

    # -- action tokens -----------------------------------------------------------------------
    def append_tokens(self, inputs: dict, token_ids: torch.Tensor) -> dict:
        """Inputs with ``token_ids`` (N, k) appended after the prompt (suffix: causal for PaliGemma)."""
        if token_ids.shape[1] == 0:
            return inputs
        out = dict(inputs)
        ones = torch.ones_like(token_ids)
        out["input_ids"] = torch.cat([inputs["input_ids"], token_ids], 1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], ones], 1)
        if "token_type_ids" in inputs:
            out["token_type_ids"] = torch.cat([inputs["token_type_ids"], ones], 1)
        if "mm_token_type_ids" in inputs:
            out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token_ids)], 1)
        return out
