"""How many bytes each rank sends per optimizer step under DDP and ZeRO-1/2/3, and the time that
puts under a step at a given link bandwidth: a model for predicting multi-node behaviour before
renting the nodes (``python -m eeg2im_scale.bench.comm --config configs/X.yaml``).

The volumes follow the ZeRO paper (Rajbhandari et al., SC 2020, section 7), with the ring
collectives NCCL uses, where each rank sends ``(N - 1) / N`` of the buffer per reduce-scatter
or all-gather:

* DDP and ZeRO-1 all-reduce the gradients once per optimizer step: a reduce-scatter plus an
  all-gather, 2Ψ;
* ZeRO-2 reduce-scatters the gradients as the backward produces them (every micro-step, since
  it keeps only its partition) and all-gathers the updated parameters once per step: 2Ψ;
* ZeRO-3 all-gathers the parameters before the forward and again before the backward and
  reduce-scatters the gradients, all on every micro-step: 3Ψ, 1.5x the others.

Ψ is the trainable parameter count times the bytes of the communicated dtype (bf16: 2). The
frozen networks a stage runs (teacher, encoders) are outside its engine and never communicated.
With gradient accumulation (``train.grad_accum`` = k) the per-micro-step traffic repeats k times:
DDP/ZeRO-1 stay at 2Ψ per step, ZeRO-2 becomes (k + 1)Ψ and ZeRO-3 3kΨ.
"""

from __future__ import annotations

import argparse
import sys

COLLECTIVES = {  # (Ψ-sized ring collectives per optimizer step, per micro-step)
    "ddp": (2, 0), "zero1": (2, 0), "zero2": (1, 1), "zero3": (0, 3),
}


def bytes_sent_per_rank(params: int, scheme: str, world_size: int, grad_accum: int = 1,
                        bytes_per_element: int = 2) -> float:
    """Bytes one rank sends per optimizer step under ``scheme`` (ddp, zero1, zero2, zero3)."""
    if scheme not in COLLECTIVES:
        raise ValueError(f"scheme must be one of {', '.join(COLLECTIVES)}, got {scheme!r}")
    if world_size < 1 or grad_accum < 1:
        raise ValueError("world_size and grad_accum must be >= 1")
    per_step, per_micro_step = COLLECTIVES[scheme]
    ring = (world_size - 1) / world_size
    return ring * params * bytes_per_element * (per_step + per_micro_step * grad_accum)


def comm_seconds(params: int, scheme: str, world_size: int, bandwidth_gbs: float, grad_accum: int = 1,
                 bytes_per_element: int = 2) -> float:
    """Lower bound on the communication time of one optimizer step at ``bandwidth_gbs`` GB/s per
    rank (no overlap with compute, no latency term)."""
    return bytes_sent_per_rank(params, scheme, world_size, grad_accum, bytes_per_element) / (bandwidth_gbs * 1e9)


def stage_parameter_counts(config_path: str) -> dict[str, int]:
    """Trainable parameters of each stage's engine at a config's geometry (its ``synth`` section
    stands in for a converted corpus's channels, time points and classes)."""
    from ..config import load_config
    from ..models.build import Geometry, build_highlevel, build_lowlevel, build_teacher_model, build_unet

    cfg = load_config(config_path)
    geo = Geometry.of_synth(cfg.synth, cfg.data)
    autoencoder, low = build_lowlevel(cfg.model, geo)
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    return {"teacher": count(build_teacher_model(cfg.model, geo)), "lowlevel": count(autoencoder, low),
            "highlevel": count(build_highlevel(cfg.model, geo)), "diffusion": count(build_unet(cfg.model, geo))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--world-size", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--bandwidth-gbs", type=float, default=50.0,
                        help="per-rank link bandwidth in GB/s (default 50: one 400 Gb/s InfiniBand port per GPU)")
    args = parser.parse_args(argv)
    counts = stage_parameter_counts(args.config)
    print("| stage | parameters | ranks | " + " | ".join(f"{s} MB sent / ms" for s in COLLECTIVES) + " |")
    print("|---|---|---|" + "---|" * len(COLLECTIVES))
    for stage, params in counts.items():
        for n in args.world_size:
            cells = [f"{bytes_sent_per_rank(params, s, n) / 1e6:.0f} / {comm_seconds(params, s, n, args.bandwidth_gbs) * 1e3:.1f}"
                     for s in COLLECTIVES]
            print(f"| {stage} | {params / 1e6:.1f} M | {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
