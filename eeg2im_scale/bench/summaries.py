"""Figures derived from benchmark JSONs, shared by the scripts that write them and the README."""

from __future__ import annotations


def cost_growth(corpora: dict, memory: dict) -> dict:
    """Time per sample and peak memory at each corpus size, and their growth from the smallest to
    the largest size: linear cost keeps the per-sample times flat, bounded memory the streaming RSS."""
    sizes = sorted(corpora, key=int)
    per_size = {size: {
        "samples": corpora[size]["num_samples"],
        "write_s_per_ksample": round(1000 * corpora[size]["synthesis_seconds"] / corpora[size]["num_samples"], 3),
        "stream_s_per_ksample": round(1000 * memory[size]["streaming_seconds"] / memory[size]["streaming_samples"], 3),
        "streaming_peak_rss_mib": memory[size]["streaming_peak_rss_mib"],
        "baseline_peak_rss_mib": memory[size]["baseline_peak_rss_mib"],
    } for size in sizes}
    first, last = per_size[sizes[0]], per_size[sizes[-1]]
    ratio = {key: round(last[key] / first[key], 2) for key in first if key != "samples"}
    return {"sizes": per_size, "largest_over_smallest": ratio}
