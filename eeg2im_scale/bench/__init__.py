"""Benchmark runner: ``python -m eeg2im_scale.bench all --out DIR`` runs every script of ``benchmarks/``.

The scripts stay standalone (each one is runnable and tested on its own); this package only
sequences them, records what happened in ``DIR/bench_summary.json`` and plots their JSONs, so one
command reproduces every published figure. Kept import-free: the benchmark scripts import
:mod:`eeg2im_scale.bench.proc` and must not pay for matplotlib.
"""
