"""Export of HF policies: LoRA adapters in the standard peft layout, and a merged plain model.

``save_adapter(policy, dir)`` writes ``adapter_config.json`` + ``adapter_model.safetensors``
(``peft.PeftModel.from_pretrained(base, dir)`` loads it).

``export_merged(policy, dir)`` folds the LoRA deltas into the base weights
(``merge_and_unload`` on a copy, so the policy keeps training) and writes a plain transformers
directory that ``AutoModelForImageTextToText.from_pretrained(dir)`` loads without peft or
vlaforge. For the token head, the learned action rows are written into ``lm_head`` at the last
``n_bins`` ids (untying ``lm_head`` from the input embeddings when they were tied, so the input
embeddings stay those the policy saw): the exported model's logits over those ids are the
policy's. Continuous heads and the value MLP cannot live in a transformers model; they are
written next to it as ``vlaforge_heads.safetensors`` with ``vlaforge_policy.json``.

    python -c "from vlaforge.policies import load_policy; from vlaforge.policies.hf import export_merged; \
export_merged(load_policy('runs/rl/final'), 'runs/merged')"
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from vlaforge.fsutil import atomic_dir


def save_adapter(policy, path: str | Path) -> Path:
    """Write the policy's LoRA adapter in the peft layout (atomically)."""
    if policy.cfg.lora_rank <= 0:
        raise ValueError("this policy has no LoRA adapter (lora_rank=0); use export_merged for the full model")
    path = Path(path)
    with atomic_dir(path) as tmp:
        policy.vlm.save_pretrained(tmp)
    return path


def _untie_lm_head(model) -> None:
    head = model.lm_head
    emb = model.get_input_embeddings()
    if head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone())
    for cfg in (model.config, model.config.get_text_config()):
        if hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False


def merged_model(policy):
    """A plain transformers model equal to the policy's backbone (LoRA merged) with the token head's rows."""
    if policy.cfg.lora_rank > 0:
        model = copy.deepcopy(policy.vlm).merge_and_unload()
    else:
        model = copy.deepcopy(policy.base_model())
    if policy.cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    if policy.cfg.head == "tokens":
        _untie_lm_head(model)
        with torch.no_grad():
            w = model.lm_head.weight
            w[policy.first_action_id:] = policy.head.weight.to(w.dtype)
    return model.eval()


def export_merged(policy, path: str | Path) -> Path:
    """Write a plain transformers model (+ tokenizer, image processor, vlaforge heads) to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    model = merged_model(policy)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        policy.proc.tokenizer.save_pretrained(tmp)
        policy.proc.image_processor.save_pretrained(tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in policy.own_state_dict().items()}
        save_file(state, str(tmp / "vlaforge_heads.safetensors"))
        meta = {"policy": policy.config_dict(), "action_token_ids": [policy.first_action_id, policy.first_action_id
                                                                      + policy.cfg.n_bins]
                if policy.cfg.head == "tokens" else None, "prompt": policy.proc.prompt}
        (tmp / "vlaforge_policy.json").write_text(json.dumps(meta, indent=2))
    return path
