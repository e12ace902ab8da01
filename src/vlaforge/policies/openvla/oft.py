"""OpenVLA-OFT's extra parts: the L1-regression action head and the proprio projector, in their layout.

OFT (Kim et al. 2025, github moojink/openvla-oft) fine-tunes OpenVLA to decode a whole chunk in ONE
forward pass: after the prompt come ``C*A`` action positions whose input embeddings are zero ("empty
action tokens") and the stop token, the Llama attends bidirectionally over the whole sequence (their
transformers fork drops the causal mask everywhere), and the last hidden states at the action
positions -- read from the last prompt token on, i.e. shifted by one as in next-token prediction --
go through an MLP that regresses the normalised actions. Proprioception (normalised with the
dataset's q01/q99) is projected to one token appended after the image patches.

Released files beside the OpenVLA-layout model: ``action_head--<step>_checkpoint.pt`` and
``proprio_projector--<step>_checkpoint.pt`` (torch state dicts, keys possibly prefixed ``module.``
from DDP), and ``dataset_statistics.json`` (the norm stats, overriding config.json's). Their keys:

    action head      model.layer_norm1, model.fc1, model.mlp_resnet_blocks.{0,1}.ffn.{0 (LayerNorm), 1 (Linear)},
                     model.layer_norm2, model.fc2       (MLPResNet: input A*D_llm -> D_llm -> A per chunk step)
    proprio proj.    fc1 (S -> D_llm), fc2 (D_llm -> D_llm), GELU between

``.safetensors`` versions of the same names are read first; a ``.pt`` is read with
``torch.load(weights_only=True)`` (tensors and containers only, as vlaforge reads its own optimizer state).
Not supported: OFT's diffusion head and FiLM (their ALOHA variant) -- refused with a message.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlaforge.policies.openvla.prismatic import UserError


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x):
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList([MLPResNetBlock(hidden_dim) for _ in range(num_blocks)])
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x):
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for blk in self.mlp_resnet_blocks:
            x = blk(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Hidden states of the C*A action positions (N, C*A, D) -> normalised actions (N, C, A)."""

    def __init__(self, llm_dim: int, action_dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(2, llm_dim * action_dim, hidden_dim or llm_dim, action_dim)

    def forward(self, h: torch.Tensor, chunk: int) -> torch.Tensor:
        return self.model(h.reshape(h.shape[0], chunk, -1))


class ProprioProjector(nn.Module):
    """(N, S) normalised proprio -> (N, D_llm): fc1, GELU, fc2."""

    def __init__(self, llm_dim: int, proprio_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x):
        return self.fc2(self.act_fn1(self.fc1(x)))


def find_component(path: Path, name: str) -> Path | None:
    """The one ``<name>*.safetensors`` or ``<name>--*checkpoint.pt`` file in ``path`` (None if absent)."""
    st = sorted(path.glob(f"{name}*.safetensors"))
    pt = sorted(f for f in path.glob(f"{name}*.pt") if "checkpoint" in f.name)
    files = st or pt
    if len(files) > 1:
        raise UserError(f"'{path}' holds {len(files)} {name} files ({', '.join(f.name for f in files)}); keep one")
    return files[0] if files else None


def load_component(file: Path) -> dict[str, torch.Tensor]:
    """A component state dict, DDP ``module.`` prefixes removed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if file.suffix == ".safetensors":
            sd = load_file(str(file))
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError) as e:
        raise UserError(f"'{file}' is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                         "re-download it") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"'{file}' is not a state dict of tensors; pass the released component file")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], file: Path) -> None:
    exp = module.state_dict()
    missing, unexpected = [k for k in exp if k not in sd], [k for k in sd if k not in exp]
    bad = [k for k in exp if k in sd and tuple(sd[k].shape) != tuple(exp[k].shape)]
    if missing or unexpected or bad:
        what = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}" if unexpected
                else f"shape of {bad[0]} {tuple(sd[bad[0]].shape)} != {tuple(exp[bad[0]].shape)}")
        raise UserError(f"'{file}' does not match this model ({what}); is it from the same OFT checkpoint?")
    module.load_state_dict({k: v.to(exp[k].dtype) for k, v in sd.items()}, strict=True)


def component_dims(sd: dict[str, torch.Tensor], kind: str) -> tuple[int, int]:
    """(action_dim, llm_dim) of an action head, or (proprio_dim, llm_dim) of a proprio projector."""
    if kind == "action_head":
        w = sd["model.fc2.weight"]  # (A, D)
        return int(w.shape[0]), int(w.shape[1])
    w = sd["fc1.weight"]  # (D, S)
    return int(w.shape[1]), int(w.shape[0])
