"""Action heads: map backbone tokens (N, L, D) to a distribution over action chunks (N, C, A).

Every head implements the same three methods, over *normalised* actions in [-1, 1]:

    sample(feats, deterministic, temperature) -> (actions (N,C,A), log_prob (N,C,A), taken: dict)
    evaluate(feats, taken, temperature)       -> (log_prob (N,C,A), entropy (N,C,A))
    sft_loss(feats, target (N,C,A), mask (N,C) | None) -> (loss, metrics)

``taken`` holds what is needed to score the same action again (pre-clip sample, token ids,
denoising chain). Log-probs are element-wise so that algorithms choose the ratio level.
"""

from vlaforge.policies.heads.gaussian import GaussianHead
from vlaforge.policies.heads.tokens import TokenHead

HEADS = {"gaussian": GaussianHead, "tokens": TokenHead}

try:  # the flow head lives in its own file and may be absent in trimmed installs
    from vlaforge.policies.heads.flow import FlowHead

    HEADS["flow"] = FlowHead
except ImportError:  # pragma: no cover
    pass

__all__ = ["HEADS", "GaussianHead", "TokenHead"]
