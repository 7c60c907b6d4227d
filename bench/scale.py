"""Real-size screens (issue 11): load, preprocess, train and sample at growing numbers of cells.

    python bench/scale.py [--cells 10000,100000,1000000] [--genes 2000] [--density 0.12]
                          [--threads 1] [--max-steps N] [--workdir bench/out/scale]
                          [--data FILE.h5ad] [--keep] [--seed 0]

Each size is a synthetic droplet-like screen (negative binomial counts, per-gene means drawn
log-normally, ~10 % control cells, 50 perturbations named after genes, some of them ``A+B``
combinations, 3 cell types), written as a sparse .h5ad in chunks into ``--workdir`` and reused
by later runs; ``--data`` measures a file of your own instead (subsampled to ``--cells`` when
given). Every measurement runs in a fresh process, so its peak memory is its own:

* load + preprocess: ``io.read``, ``runs.prepare`` and ``data.populations``;
* training, 1 process: ``python -m departures_core train ... --epochs 1 --device cpu``;
* training, 2 processes: the same under ``torch.distributed.run --nproc_per_node 2``;
* sampling: ``python -m departures_core predict RUN --n-cells 2000 --steps 50``, timed around
  the sampling call (start-up, loading the run and writing the output excluded).

Training cells/s are pairs trained per second after the first 5 steps (pairing an epoch and
warming up excluded), read from the run's history.csv. Prints one table with a row per size and
the scaling exponents with the number of cells (slope of log value vs log cells).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PY = sys.executable
N_PERTURBATIONS, N_COMBINATIONS, N_CELL_TYPES = 50, 10, 3
CONTROL_SHARE, THETA, CHUNK_VALUES = 0.1, 2.0, 10_000_000
WARMUP_STEPS, PREDICT_CELLS, PREDICT_STEPS = 5, 2000, 50


# ---------------------------------------------------------------- synthetic screen


def gene_means(rng, n_genes: int, density: float) -> np.ndarray:
    """Per-gene means (log-normal), scaled so that ~``density`` of the counts are non-zero."""
    base = rng.lognormal(0.0, 1.8, n_genes)
    size = rng.lognormal(0.0, 0.4, 256)[:, None]  # cells' size factors, as `synthesize` draws

    def nonzero(scale: float) -> float:
        return np.mean(1.0 - (THETA / (THETA + scale * size * base)) ** THETA)

    lo, hi = -20.0, 20.0
    for _ in range(60):  # bisection on log(scale)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if nonzero(np.exp(mid)) < density else (lo, mid)
    means = base * np.exp(lo)
    top = np.argsort(-means)[: max(1, n_genes // 200)]  # a few housekeeping genes: counts > 30
    means[top] = np.maximum(means[top], 25.0)
    return means


def design(rng, n_genes: int, density: float):
    """Labels and the mean of every (cell type, perturbation) group: ``(labels, means)``."""
    means = gene_means(rng, n_genes, density)
    candidates = np.argsort(-means)[max(1, n_genes // 200) : max(n_genes // 2, 2)]
    n_single = min(N_PERTURBATIONS - N_COMBINATIONS, len(candidates))
    singles = rng.choice(candidates, n_single, replace=False)
    pairs = {tuple(sorted(rng.choice(singles, 2, replace=False))) for _ in range(N_COMBINATIONS)}
    targets = {f"G{g}": [g] for g in singles} | {f"G{a}+G{b}": [a, b] for a, b in pairs}
    labels = ["control", *sorted(targets)]
    table = np.empty((N_CELL_TYPES, len(labels), n_genes), dtype=np.float32)
    for c in range(N_CELL_TYPES):
        type_means = means * rng.lognormal(0.0, 0.4, n_genes)
        for p, label in enumerate(labels):
            m = type_means.copy()
            if label != "control":
                shifted = rng.choice(n_genes, 10, replace=False)
                m[shifted] *= rng.lognormal(0.0, 1.0, 10)
                m[targets[label]] *= 0.15  # knock-down of the named genes
            table[c, p] = m
    return labels, table.reshape(N_CELL_TYPES * len(labels), n_genes)


def synthesize(path: Path, n_cells: int, n_genes: int, density: float, seed: int) -> None:
    """Write a counts screen to ``path`` chunk by chunk (never a dense cells x genes array)."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    labels, table = design(rng, n_genes, density)
    n_pert = len(labels) - 1
    pert = np.where(rng.random(n_cells) < CONTROL_SHARE, 0, rng.integers(1, n_pert + 1, n_cells))
    ctype = rng.integers(0, N_CELL_TYPES, n_cells)
    group, size = ctype * len(labels) + pert, rng.lognormal(0.0, 0.4, n_cells).astype(np.float32)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(pert, labels),
            "cell_type": pd.Categorical.from_codes(
                ctype, [f"type{i}" for i in range(N_CELL_TYPES)]
            ),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    tmp = path.with_suffix(".partial")
    chunk = max(1, CHUNK_VALUES // n_genes)
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for start in tqdm(range(0, n_cells, chunk), desc=f"generate {path.name}", unit="chunk"):
            rows = slice(start, start + chunk)
            mu = table[group[rows]] * size[rows, None]
            lam = rng.standard_gamma(THETA, mu.shape, dtype=np.float32) * (mu / THETA)
            x = sp.csr_matrix(rng.poisson(lam).astype(np.float32))
            if start == 0:
                write_elem(f, "X", x)
            else:
                sparse_dataset(f["X"]).append(x)
    tmp.replace(path)  # a killed generation is never reused


def file_shape(path: Path) -> tuple[int, int, float | None]:
    """``(cells, genes, non-zero share)`` of an .h5ad's X, read from its header (share: sparse
    X only)."""
    import h5py

    with h5py.File(path, "r") as f:
        x = f["X"]
        if not isinstance(x, h5py.Group):
            return (*map(int, x.shape), None)
        rows, cols = map(int, x.attrs["shape"])
        return rows, cols, float(x["indptr"][-1]) / (rows * cols)


def subsample(data: Path, n_cells: int, seed: int, out: Path) -> int:
    """``n_cells`` random cells of ``data`` into ``out``; the file's cells if it has fewer."""
    import anndata as ad

    full = ad.read_h5ad(data, backed="r")
    if n_cells >= full.n_obs:
        return full.n_obs
    if not out.exists():
        rows = np.sort(np.random.default_rng(seed).choice(full.n_obs, n_cells, replace=False))
        full[rows].to_memory().write_h5ad(out.with_suffix(".partial"))
        out.with_suffix(".partial").replace(out)
    return n_cells


# ---------------------------------------------------------------- child processes


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in KiB (VmHWM: peak resident memory); 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def trainer_ranks(root: int) -> list[int]:
    """Processes under ``root`` running ``departures_core`` (the torchrun workers)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found = []
    for pid in parent:
        p = pid
        while p in parent and p != root:
            p = parent[p]
        if p == root and pid != root:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "departures_core" in cmd and "distributed.run" not in cmd:
                found.append(pid)
    return found


def end(pid: int) -> None:
    """Kill our child ``pid``: the torchrun workers under it first (torchrun starts them in
    sessions of their own, and they outlive it), then the process group it leads."""
    for rank in trainer_ranks(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_child(cmd, env, log: Path, timeout: float, *, ranks=False, watch=None) -> dict:
    """Run ``cmd`` alone; its wall seconds, exit code, peak memory (KiB) and output.

    The peak is ``wait4``'s ``ru_maxrss`` of this child and its descendants (this run only,
    unlike RUSAGE_CHILDREN, which keeps the largest child ever). With ``ranks`` the
    ``departures_core`` processes under it are polled for VmHWM, one peak per rank."""
    hwm: dict[int, int] = {}
    start, timed_out = time.perf_counter(), False
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        while not (waited := os.wait4(proc.pid, os.WNOHANG))[0]:
            if ranks:
                for r in trainer_ranks(proc.pid):
                    hwm[r] = max(hwm.get(r, 0), proc_status(r, "VmHWM"))
            if watch:
                watch()
            if not timed_out and time.perf_counter() - start > timeout:
                timed_out = True
                end(proc.pid)
            time.sleep(0.25)
    except BaseException:  # Ctrl-C: its own session does not get it, so end it here
        end(proc.pid)
        raise
    proc.returncode = os.waitstatus_to_exitcode(waited[1])
    return {
        "rc": proc.returncode,
        "wall": time.perf_counter() - start,
        "maxrss": waited[2].ru_maxrss,
        "ranks": sorted(hwm.values(), reverse=True),
        "stdout": log.with_suffix(".out").read_text(),
        "stderr": log.with_suffix(".err").read_text(),
        "timed_out": timed_out,
    }


def reason(child: dict) -> str:
    """The first line of the error a child printed (its ``error:`` line or exception)."""
    if child["timed_out"]:
        return "timed out (--timeout)"
    lines = [s.strip() for s in child["stderr"].splitlines() if s.strip()]
    for pattern in (r"^error:", r"^[\w.]*(Error|Exception)\b.*:", r"^[\w.]*(Error|Exception)\b"):
        hit = next((s for s in lines if re.match(pattern, s)), None)
        if hit:
            return hit
    return lines[-1] if lines else f"exit code {child['rc']}"


def cli_flags(command: str) -> set[str]:
    """The ``--flags`` that ``python -m departures_core COMMAND --help`` lists."""
    out = subprocess.run(
        [PY, "-m", "departures_core", command, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    return set(re.findall(r"(--[a-z][a-z-]*)", out.stdout))


# ---------------------------------------------------------------- workers (in the child)


def worker_load(path: str, n_genes: str, threads: str) -> None:
    import scanpy  # noqa: F401  (start-up: `pp.preprocess` imports it on first use)
    import torch

    torch.set_num_threads(int(threads))
    from departures_core import data, io, runs
    from departures_core.config import DataConfig, RunConfig

    base = proc_status(os.getpid(), "VmRSS")
    cfg = DataConfig(
        perturbation_key="perturbation",
        control="control",
        cell_type_key="cell_type",
        n_genes=int(n_genes),
    )
    config = RunConfig(data=cfg)
    start = time.perf_counter()
    adata = io.read(path)  # kept alive while preparing, as the CLI does
    prepared = runs.prepare(adata, config)
    pop = data.populations(prepared, config.data, seed=0)
    seconds = time.perf_counter() - start
    counts = bool(prepared.uns["departures_pp"]["input_was_counts"])
    print(
        json.dumps(
            {"seconds": seconds, "baseline_kib": base, "genes": len(pop.genes), "counts": counts}
        )
    )


def worker_predict(run_dir: str, perturbation: str, threads: str, out: str, *flags) -> None:
    import torch

    torch.set_num_threads(int(threads))
    from departures_core import cli, runs

    timed, original = {}, runs.predict

    def predict(*args, **kwargs):
        start = time.perf_counter()
        pred = original(*args, **kwargs)
        timed.update(seconds=time.perf_counter() - start, cells=pred.n_obs)
        return pred

    runs.predict = predict  # the CLI looks it up when it is called
    argv = ["predict", run_dir, "--perturbation", perturbation, "--out", out, *flags]
    rc = cli.main(argv)
    print(json.dumps({**timed, "rc": rc}))
    sys.exit(rc)


# ---------------------------------------------------------------- measurements


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def train_rate(run_dir: Path, world: int) -> float:
    """Pairs per second after the warm-up steps, from the run's history.csv and config.json."""
    import pandas as pd

    hist = pd.read_csv(run_dir / "history.csv")
    batch = json.loads((run_dir / "config.json").read_text())["train"].get("batch_size") or 64
    after = hist[hist["step"] > WARMUP_STEPS]
    at = hist[hist["step"] <= WARMUP_STEPS]
    if len(after) < 2 or at.empty:
        raise ValueError(f"only {len(hist)} steps, too few for a rate after warm-up")
    seconds = after["seconds"].iloc[-1] - at["seconds"].iloc[-1]
    return len(after) * batch * world / seconds


def stopper(run_dir: Path, max_steps: int | None):
    """A watch that creates the run's STOP file once ``max_steps`` steps are reported."""

    def watch() -> None:
        try:
            step = json.loads((run_dir / "progress.json").read_text()).get("step", 0)
        except (OSError, ValueError):
            return
        if step >= max_steps:
            (run_dir / "STOP").touch()

    return watch if max_steps else None


def train_command(path: Path, run_dir: Path, args, flags: set[str], world: int) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    cmd = [PY, *(launcher if world > 1 else []), "-m", "departures_core", "train", str(path)]
    cmd += ["--perturbation-key", "perturbation", "--control", "control"]
    cmd += ["--cell-type-key", "cell_type", "--n-genes", str(args.genes), "--epochs", "1"]
    cmd += ["--device", "cpu", "--out", str(run_dir)]
    if "--threads" in flags:
        cmd += ["--threads", str(args.threads)]
    if args.max_steps and "--steps" in flags:
        cmd += ["--steps", str(args.max_steps)]
    return cmd


def measure_train(path: Path, work: Path, args, flags: set[str], world: int) -> dict:
    run_dir = work / f"run-{world}proc"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    child = run_child(
        train_command(path, run_dir, args, flags, world),
        child_env(args.threads),
        work / f"train-{world}proc",
        args.timeout,
        ranks=world > 1,
        watch=stopper(run_dir, args.max_steps),
    )
    if child["rc"] != 0:
        return {"error": reason(child)}
    ranks = child["ranks"] or [child["maxrss"]]
    return {
        "rate": train_rate(run_dir, world),
        "peak": child["maxrss"],
        "rank_max": max(ranks),
        "rank_sum": sum(ranks),
        "run": run_dir,
    }


def measure_load(path: Path, work: Path, args) -> dict:
    cmd = [PY, __file__, "--worker", "load", str(path), str(args.genes), str(args.threads)]
    child = run_child(cmd, child_env(args.threads), work / "load", args.timeout)
    if child["rc"] != 0:
        return {"error": reason(child)}
    result = json.loads(child["stdout"].strip().splitlines()[-1])
    return {**result, "peak": child["maxrss"], "above": child["maxrss"] - result["baseline_kib"]}


def measure_predict(run_dir: Path, work: Path, args, flags: set[str]) -> dict:
    split = json.loads((run_dir / "split.json").read_text())
    perturbation = (split["holdout"] or split["train"])[0]
    extra = ["--n-cells", str(PREDICT_CELLS), "--steps", str(PREDICT_STEPS), "--device", "cpu"]
    if "--threads" in flags:
        extra += ["--threads", str(args.threads)]
    cmd = [PY, __file__, "--worker", "predict", str(run_dir), perturbation, str(args.threads)]
    cmd += [str(work / "predicted.h5ad"), *extra]
    child = run_child(cmd, child_env(args.threads), work / "predict", args.timeout)
    if child["rc"] != 0:
        return {"error": reason(child)}
    timed = json.loads(child["stdout"].strip().splitlines()[-1])
    return {"rate": timed["cells"] / timed["seconds"], "wall": child["wall"], **timed}


def attempt(what: str, fn, *args) -> dict:
    """``fn(*args)``, or ``{"error": ...}``: one failed measurement never ends the benchmark."""
    print(f"  {what} ...", file=sys.stderr, flush=True)
    try:
        result = fn(*args)
    except Exception as exc:  # reported in the table cell
        result = {"error": f"{type(exc).__name__}: {exc}"}
    note = result.get("error") or ", ".join(
        f"{k} {v:.3g}" for k, v in result.items() if isinstance(v, float | int)
    )
    print(f"  {what}: {note}", file=sys.stderr, flush=True)
    return result


def measure_size(path: Path, n_cells: int, args, flags: dict) -> dict:
    work = Path(args.workdir) / f"work-{n_cells}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"[{n_cells:,} cells] {path}", file=sys.stderr, flush=True)
    _, genes, density = file_shape(path)
    row = {"cells": n_cells, "genes": genes, "density": density}
    row["load"] = attempt("load + preprocess", measure_load, path, work, args)
    row["train1"] = attempt("train, 1 process", measure_train, path, work, args, flags["train"], 1)
    row["train2"] = attempt(
        "train, 2 processes", measure_train, path, work, args, flags["train"], 2
    )
    if "run" in row["train1"]:
        run = row["train1"]["run"]
        row["predict"] = attempt("predict", measure_predict, run, work, args, flags["predict"])
    else:
        row["predict"] = {"error": "no trained run"}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return row


# ---------------------------------------------------------------- table


def cell(result: dict, fmt, key: str = "rate") -> str:
    if "error" in result:
        return "failed: " + result["error"][:120].replace("|", "/")
    return fmt(result[key])


def gb(kib: float) -> str:
    return f"{kib / 2**20:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| cells | genes | non-zero % | load+preprocess s | peak GB load+preprocess "
        "| peak GB train | train cells/s (1 proc) | train cells/s (2 procs) "
        "| peak GB 2 procs (max rank / sum) | sampling cells/s (50 steps, excl. start-up) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t2 = r["train2"]  # not supported by the installed departures_core: n/a and why
        rate2 = f"n/a: {t2['error'][:120]}".replace("|", "/") if "error" in t2 else None
        density = "?" if r["density"] is None else f"{100 * r['density']:.1f}"
        kept = r["load"].get("genes", r["genes"])
        genes = f"{r['genes']:,}" + (f" ({kept:,} kept)" if kept != r["genes"] else "")
        lines.append(
            f"| {r['cells']:,} | {genes} | {density} "
            f"| {cell(r['load'], '{:.1f}'.format, 'seconds')} | {cell(r['load'], gb, 'peak')} "
            f"| {cell(r['train1'], gb, 'peak')} | {cell(r['train1'], '{:,.0f}'.format)} "
            f"| {rate2 or cell(t2, '{:,.0f}'.format)} "
            f"| {'n/a' if 'error' in t2 else gb(t2['rank_max']) + ' / ' + gb(t2['rank_sum'])} "
            f"| {cell(r['predict'], '{:,.0f}'.format)} |"
        )
    return "\n".join(lines)


def exponents(rows: list[dict]) -> list[str]:
    """Slope of log(value) against log(cells) for each measure with >= 2 sizes."""
    measures = {
        "load+preprocess time": ("load", "seconds"),
        "load+preprocess peak memory": ("load", "peak"),
        "load+preprocess peak memory above the imports": ("load", "above"),
        "training peak memory (1 proc)": ("train1", "peak"),
        "training cells/s (1 proc)": ("train1", "rate"),
        "training cells/s (2 procs)": ("train2", "rate"),
        "sampling cells/s": ("predict", "rate"),
    }
    lines = []
    for name, (what, key) in measures.items():
        pts = [(r["cells"], r[what][key]) for r in rows if r[what].get(key, 0) > 0]
        if len({c for c, _ in pts}) >= 2:
            slope = np.polyfit(*np.log(np.array(pts, dtype=float)).T, 1)[0]
            lines.append(f"- {name} ~ cells^{slope:.2f} ({len(pts)} sizes)")
    return lines


# ---------------------------------------------------------------- main


def datasets(args) -> list[tuple[int, Path]]:
    """``(cells, file)`` of every size: generated, subsampled from ``--data``, or that file."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = Path(args.data)
        if not args.cells:
            return [(file_shape(data)[0], data)]
        out = []
        for n in map(int, args.cells.split(",")):
            path = work / f"{data.stem}-{n}-s{args.seed}.h5ad"
            got = subsample(data, n, args.seed, path)
            out.append((got, path if got == n else data))
        return list(dict(out).items())
    out = []
    for n in map(int, (args.cells or "10000,100000,1000000").split(",")):
        path = work / f"synth-{n}x{args.genes}-d{args.density:g}-s{args.seed}.h5ad"
        if not path.exists():
            synthesize(path, n, args.genes, args.density, args.seed)
        out.append((n, path))
    return out


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # a measurement's own process: --worker KIND ARGS...
        return {"load": worker_load, "predict": worker_predict}[sys.argv[2]](*sys.argv[3:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", help="comma-separated sizes (default 10000,100000,1000000)")
    ap.add_argument("--genes", type=int, default=2000, help="genes generated and kept")
    ap.add_argument("--density", type=float, default=0.12, help="target non-zero share")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument(
        "--max-steps",
        type=int,
        help="stop each training after about this many steps (its STOP file, created when the "
        "run reports them: every 25 steps; also --steps when the CLI has it)",
    )
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "scale"))
    ap.add_argument("--data", help="an .h5ad of your own instead of generated screens")
    ap.add_argument("--keep", action="store_true", help="keep the runs and predictions too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per measurement")
    args = ap.parse_args()
    flags = {c: cli_flags(c) for c in ("train", "predict")}
    sizes = datasets(args)
    rows = [measure_size(path, n, args, flags) for n, path in sizes]
    base = [r["load"]["baseline_kib"] for r in rows if "baseline_kib" in r["load"]]
    print(
        f"\nthreads per process {args.threads}, 1 epoch"
        f"{f' (stopped once >= {args.max_steps} steps are reported)' if args.max_steps else ''}, "
        f"--threads {'passed' if '--threads' in flags['train'] else 'not in the CLI'}; "
        f"a process holds {gb(np.median(base)) if base else '?'} GB after its imports\n"
    )
    print(table(rows))
    lines = exponents(rows)
    print("\nscaling with the number of cells (slope of log value vs log cells):")
    print("\n".join(lines) if lines else "- needs >= 2 sizes measured")


if __name__ == "__main__":
    main()
