"""Run every benchmark of ``benchmarks/`` with one command, then plot the results.

``python -m eeg2im_scale.bench all --out DIR [--quick] [--only NAME ...] [--skip NAME ...] [--work-dir W]``
runs the scripts of :data:`REGISTRY` one after another as subprocesses (their output streams here
and into ``DIR/logs/<name>.log``), writes ``DIR/<name>.json`` for each, one PNG per JSON and
``DIR/bench_summary.json`` (per benchmark: command, status, exit code, wall time). A failing
benchmark is recorded and the others still run; the exit status is 1 if any failed.
``python -m eeg2im_scale.bench list`` shows the registry; ``plots --results DIR --out DIR2`` only
plots existing JSONs. Subprocesses, not imports: each script is the tested, standalone entry point,
and a crash or a leaked CUDA context in one cannot spoil the next. Needs a source checkout (the
scripts live in ``benchmarks/``, outside the package).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
SUMMARY = "bench_summary.json"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One script of ``benchmarks/``; ``DIR/<name>.json`` is its result whichever way ``--out`` is passed."""

    name: str
    duration: str  # on the shared 2-core CPU, from the script's docstring or its committed result
    out_is_dir: bool = False  # --out DIR (the script names its files) rather than --out DIR/<name>.json
    needs_gpu: bool = False  # its figures mean something only with CUDA
    takes_work_dir: bool = True
    note: str = ""

    @property
    def script(self) -> Path:
        return BENCHMARKS / f"{self.name}.py"

    def result(self, out: Path) -> Path:
        return out / f"{self.name}.json"

    def command(self, out: Path, quick: bool, work_dir: Path | None) -> list[str]:
        command = [sys.executable, str(self.script), "--out", str(out if self.out_is_dir else self.result(out))]
        if quick:
            command.append("--quick")
        if work_dir and self.takes_work_dir:
            command += ["--work-dir", str(work_dir / self.name)]
        return command


REGISTRY = (
    Benchmark("loader_throughput", "~1.5 min (+5 min to write its corpora once); quick ~20 s"),
    Benchmark("train_throughput", "~7 min (9 torchrun launches: ZeRO 1/2/3 x 1/2 ranks); quick ~2 min"),
    Benchmark("eval_throughput", "~5 min; quick ~3.5 min"),
    Benchmark("gpu_diffusion", "~8 min on one H100; quick (CPU smoke) ~1-2 min", out_is_dir=True, needs_gpu=True,
              takes_work_dir=False, note="attention backends, torch.compile, DDP vs ZeRO; without CUDA: --quick only"),
    Benchmark("remote_stream", "~3 min (+2 min to write its corpus once); quick ~10 s",
              note="a corpus over loopback HTTP vs local disk, 0/2 workers, with and without the shard cache"),
    Benchmark("manifest_scale", "~10 min (a 1M-sample corpus written and deleted); quick ~30 s",
              note="writer and loader start-up cost at 10k / 100k / 1M samples"),
    Benchmark("encoders", "~40-60 min, estimated (teacher once + 9 backbones x 150 steps); quick ~1 min",
              note="classic vs foundation-model EEG encoders: top-1 by image, params, samples/s"),
    Benchmark("ablation", "~3 h (2 methods x 3 seeds x 3 variants); quick ~2-5 min",
              note="long: --skip ablation, or run it alone with --only ablation"),
)
NAMES = [b.name for b in REGISTRY]


def skip_reason(bench: Benchmark, quick: bool, cuda: bool) -> str | None:
    """Why ``bench`` is not run here, or None. A GPU benchmark's full grid on a CPU would take hours and
    its CPU numbers would overwrite the GPU results; its --quick mode is a CPU smoke run, so that runs."""
    if bench.needs_gpu and not cuda and not quick:
        return "needs CUDA and none is visible; --quick runs its CPU smoke mode"
    return None


def stream(command: list[str], log: Path) -> int:
    """Run ``command``, echoing its stdout+stderr as it comes and keeping a copy in ``log``; → exit code.
    Raw chunks, not lines, so progress bars (``\\r``) pass through unchanged."""
    with open(log, "wb") as copy, subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            copy.write(chunk)
    return process.returncode


def run_one(bench: Benchmark, out: Path, quick: bool, work_dir: Path | None) -> dict:
    """Run one benchmark; its summary record. "failed" also when it exits 0 without (re)writing its JSON."""
    command = bench.command(out, quick, work_dir)
    log = out / "logs" / f"{bench.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n=== {bench.name}: {' '.join(command)}", flush=True)
    started, started_at = time.perf_counter(), time.time()
    code = stream(command, log)
    path = bench.result(out)
    fresh = path.is_file() and path.stat().st_mtime >= started_at  # not a previous run's file left in DIR
    record = {"name": bench.name, "status": "ok" if code == 0 and fresh else "failed", "exit_code": code,
              "wall_s": round(time.perf_counter() - started, 1), "command": command, "log": str(log),
              "result": str(path) if fresh else None}
    if code == 0 and not fresh:
        record["error"] = "exited 0 but wrote no result JSON"
    print(f"=== {bench.name}: {record['status']} (exit {code}, {record['wall_s']} s)", flush=True)
    return record


def cuda_available() -> bool:
    import torch  # here, not at the top: `list` and `plots` do not need it

    return torch.cuda.is_available()


def write_summary(out: Path, summary: dict) -> None:
    """Rewritten after every benchmark, so an interrupted run still says what finished."""
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def run_all(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    if args.quick and out == (BENCHMARKS / "results").resolve():
        sys.exit("--quick numbers are meaningless: not writing them over the committed benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    work_dir = args.work_dir.resolve() if args.work_dir else None
    chosen = [b for b in REGISTRY if (not args.only or b.name in args.only) and b.name not in args.skip]
    cuda = cuda_available()
    started = time.perf_counter()
    summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "cuda": cuda, "cpu_count": os.cpu_count(), "argv": sys.argv[1:],
               "benchmarks": []}
    print("plan: " + "; ".join(f"{b.name} ({b.duration})" for b in chosen), flush=True)
    for bench in chosen:
        reason = skip_reason(bench, args.quick, cuda)
        summary["benchmarks"].append({"name": bench.name, "status": "skipped", "reason": reason} if reason
                                     else run_one(bench, out, args.quick, work_dir))
        write_summary(out, summary)
    from eeg2im_scale.bench.plots import plot_results

    summary["plots"] = plot_results(out, out)
    summary["failed"] = [r["name"] for r in summary["benchmarks"] if r["status"] == "failed"]
    summary["total_wall_s"] = round(time.perf_counter() - started, 1)
    write_summary(out, summary)
    print_summary(summary, out)
    return 1 if summary["failed"] else 0


def print_summary(summary: dict, out: Path) -> None:
    for record in summary["benchmarks"]:
        print(f"{record['name']:<18} {record['status']:<8} {record.get('wall_s', '')} {record.get('reason', '')}")
    print_plots(summary["plots"])
    print(f"wrote {out / SUMMARY}; failed: {', '.join(summary['failed']) or 'none'}")


def print_plots(done: dict[str, dict]) -> None:
    for name, what in done.items():
        print(f"{name:<18} {what.get('png') or what['error']}")


def run_plots(args: argparse.Namespace) -> int:
    from eeg2im_scale.bench.plots import plot_results

    done = plot_results(args.results, args.out)
    print_plots(done)
    if not done:
        print(f"no benchmark JSON in {args.results}", file=sys.stderr)
    return 1 if not done or any("error" in what for what in done.values()) else 0


def run_list(_: argparse.Namespace) -> int:
    for b in REGISTRY:
        gpu = "GPU" if b.needs_gpu else "CPU"
        print(f"{b.name:<18} {gpu}  {b.script.relative_to(REPO)}  {b.duration}" + (f"  [{b.note}]" if b.note else ""))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eeg2im_scale.bench", description=__doc__.splitlines()[0])
    commands = ap.add_subparsers(dest="command", required=True)
    every = commands.add_parser("all", help="run the benchmarks, then plot their JSONs")
    every.add_argument("--out", type=Path, required=True, help="folder for the JSONs, PNGs, logs and summary")
    every.add_argument("--quick", action="store_true", help="every script's smoke mode (numbers meaningless)")
    every.add_argument("--only", nargs="+", choices=NAMES, default=[], metavar="NAME", help="run only these")
    every.add_argument("--skip", nargs="+", choices=NAMES, default=[], metavar="NAME", help="run all but these")
    every.add_argument("--work-dir", type=Path, help="scratch (corpora, runs) as W/<name>; default: each script's own")
    every.set_defaults(run=run_all)
    plots = commands.add_parser("plots", help="plot existing JSONs, running nothing")
    plots.add_argument("--results", type=Path, default=BENCHMARKS / "results", help="folder of <benchmark>.json")
    plots.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    plots.set_defaults(run=run_plots)
    commands.add_parser("list", help="the registry").set_defaults(run=run_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
