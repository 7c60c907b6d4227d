"""Training and sampling speed on the demo dataset, CPU (and CUDA when present).

    python bench/train_speed.py [--repeats 3] [--skip-cli] [--skip-concurrent]

Prints one table: training cells/s (OT pairing, and random pairing as the baseline
measured in the same run), sampling cells/s (50 steps; the on/off endpoint drawn at once, and
the sequential on/off draws as the baseline), the wall time of the
default ``python -m departures_core train`` on the demo data, and the training steps/s of
one command-line training alone against each of two running at once, with the default
(capped) threads and with a thread per core (the old default). Medians over repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from departures_core import io, runs  # noqa: E402
from departures_core.config import DataConfig, OTConfig, RunConfig, TrainConfig  # noqa: E402
from departures_core.data import populations  # noqa: E402
from departures_core.model import Departures, condition_rows, encode  # noqa: E402
from departures_core.sample import simulate  # noqa: E402
from departures_core.train import fit  # noqa: E402


def train_rate(data, config: RunConfig, device: str, epochs: int = 3) -> float:
    """Perturbed cells (pairs) per second over ``epochs`` epochs, pairing included."""
    torch.manual_seed(0)
    model = Departures.build(data, config)
    start = time.perf_counter()
    fit(model, data, device=device, progress_bar=False)
    seconds = time.perf_counter() - start
    return sum(len(c.perturbed) for c in data.train_conditions()) * epochs / seconds


def sample_rate(
    data, config: RunConfig, device: str, n_cells: int = 2000, onoff: str = "endpoint"
) -> float:
    model = Departures.build(data, config)
    conds = data.heldout_conditions() or data.train_conditions()
    cond = conds[0]
    rows = condition_rows([cond]) * n_cells
    x0 = data.x[np.random.default_rng(0).choice(cond.control, n_cells)]
    start = time.perf_counter()
    simulate(model.net, x0, encode(model.vocab, rows), steps=50, device=device, onoff=onoff)
    return n_cells / (time.perf_counter() - start)


def cli_wall_time() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "departures_core",
                "train",
                "--device",
                "cpu",
                "--out",
                str(Path(tmp) / "run"),
            ],
            cwd=ROOT,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def steps_per_second(run_dir: Path) -> float:
    """Optimiser steps per second of a finished run, after its first 5 steps."""
    import pandas as pd

    h = pd.read_csv(run_dir / "history.csv")
    h = h[h["step"] > 5]
    return (len(h) - 1) / float(h["seconds"].iloc[-1] - h["seconds"].iloc[0])


def concurrent_rates(copies: int, threads: int | None) -> list[float]:
    """Steps/s of ``copies`` one-epoch demo trainings (command line) started together, with
    ``--threads threads`` (None: the default cap)."""
    with tempfile.TemporaryDirectory() as tmp:
        procs, dirs = [], []
        for i in range(copies):
            run_dir = Path(tmp) / f"run{i}"
            cmd = [sys.executable, "-m", "departures_core", "train", "--epochs", "1"]
            cmd += ["--device", "cpu", "--out", str(run_dir)]
            cmd += ["--threads", str(threads)] if threads else []
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL))
            dirs.append(run_dir)
        for proc in procs:
            proc.wait()
        return [steps_per_second(d) for d in dirs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--skip-concurrent", action="store_true")
    args = ap.parse_args()
    base = RunConfig(data=DataConfig(cell_type_key="cell_type"))
    adata = runs.prepare(io.load_demo(), base)
    data = populations(adata, base.data, seed=0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for label, pairing in (("OT pairing", "ot"), ("random pairing (baseline)", "random")):
            cfg = base.replace(
                ot=OTConfig(pairing=pairing), train=TrainConfig(epochs=3, device=device)
            )
            rates = [train_rate(data, cfg, device) for _ in range(args.repeats)]
            rows.append((device, f"train cells/s, {label}", statistics.median(rates)))
        for label, onoff in (("", "endpoint"), (", sequential on/off", "sequential")):
            rates = [sample_rate(data, base, device, onoff=onoff) for _ in range(args.repeats)]
            rows.append((device, f"sample cells/s, 50 steps{label}", statistics.median(rates)))
    if not args.skip_cli:
        times = [cli_wall_time() for _ in range(max(1, args.repeats // 2))]
        rows.append(("cpu", "default `train` on demo, wall s", statistics.median(times)))
    if not args.skip_concurrent:
        cores = len(os.sched_getaffinity(0))
        alone = statistics.median(concurrent_rates(1, None))
        rows.append(("cpu", "train steps/s, 1 training alone", alone))
        both = statistics.median(concurrent_rates(2, None))
        rows.append(("cpu", "train steps/s, each of 2 at once", both))
        spin = statistics.median(concurrent_rates(2, cores))
        rows.append(("cpu", f"... each of 2 at once, {cores} threads each", spin))
    ot_rate = {d: r for d, what, r in rows if what.startswith("train cells/s, OT")}
    rnd_rate = {d: r for d, what, r in rows if "random" in what}
    print(
        f"\ntorch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"demo {data.x.shape[0]} cells x {data.x.shape[1]} genes, medians of {args.repeats}\n"
    )
    print(f"| {'device':6} | {'measure':40} | {'value':>10} |")
    print(f"|{'-' * 8}|{'-' * 42}|{'-' * 12}|")
    for device, what, value in rows:
        print(f"| {device:6} | {what:40} | {value:10.1f} |")
    for d in ot_rate:
        print(
            f"\n{d}: OT pairing runs at {ot_rate[d] / rnd_rate[d]:.2f}x the speed of random pairing"
        )


if __name__ == "__main__":
    main()
