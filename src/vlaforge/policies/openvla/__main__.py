"""Wrap a released OpenVLA / OpenVLA-OFT directory as a vlaforge policy checkpoint (for ``vlaforge eval`` /
``vlaforge sft --init``); the weights stay where they are (``path`` points at them).

    python -m vlaforge.policies.openvla DIR OUT [--oft] [--unnorm-key K] [--convention libero] [--chunk-size 8]
        [--action-dim 7] [--state-dim 8] [--views 2] [--image-size 224] [--center-crop 0.9]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlaforge.policies.openvla", description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("out")
    ap.add_argument("--oft", action="store_true")
    ap.add_argument("--unnorm-key")
    ap.add_argument("--convention", default="none", choices=["none", "libero"])
    ap.add_argument("--chunk-size", type=int, default=1)
    ap.add_argument("--action-dim", type=int, default=7)
    ap.add_argument("--state-dim", type=int, default=8)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--center-crop", type=float, default=1.0)
    ap.add_argument("--max-text-tokens", type=int, default=48)
    ap.add_argument("--lora-rank", type=int, default=32, help="adapters start at zero (same outputs); 0 copies the weights")
    a = ap.parse_args(argv)
    from vlaforge.policies import build_policy, save_policy

    try:
        policy = build_policy("openvla-oft" if a.oft else "openvla", path=a.path, unnorm_key=a.unnorm_key,
                              convention=a.convention, chunk_size=a.chunk_size, action_dim=a.action_dim,
                              state_dim=a.state_dim, views=a.views, image_size=a.image_size, center_crop=a.center_crop,
                              lora_rank=a.lora_rank, max_text_tokens=a.max_text_tokens)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    save_policy(policy, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
