"""Command line: ``departures train|predict|evaluate|app ...`` (= ``python -m departures_core``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import DataConfig, OTConfig, RunConfig, TrainConfig
from .errors import DeparturesError

USER_ERROR = 2


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="departures",
        description="Departures: perturbation prediction with neural Schrödinger bridges. "
        "`python -m departures_core` is the same command.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "app",
        help="open the Departures Explorer app (streamlit run on the installed app)",
        description="Run the app with Streamlit. Options after the command go to "
        "`streamlit run`, e.g. `departures app --server.port 8502`.",
    )

    t = sub.add_parser("train", help="train a model on an .h5ad into a run folder")
    t.add_argument("data", nargs="?", help="input .h5ad (default: the bundled demo dataset)")
    t.add_argument("--perturbation-key", help="obs column with perturbation labels (auto)")
    t.add_argument("--control", help="value of that column marking control cells (auto)")
    t.add_argument("--cell-type-key", help="obs column with cell types (auto)")
    t.add_argument("--dose-key", help="obs column with numeric doses")
    split = t.add_mutually_exclusive_group()
    split.add_argument("--holdout", type=_csv, help="comma-separated perturbations to hold out")
    split.add_argument("--holdout-fraction", type=float, help="seeded fraction to hold out")
    t.add_argument(
        "--holdout-cell-type",
        type=_csv,
        default=(),
        help="comma-separated cell types whose perturbed cells are held out",
    )
    d, tr, o = DataConfig(), TrainConfig(), OTConfig()
    t.add_argument(
        "--epochs",
        type=int,
        default=tr.epochs,
        help=f"passes over all pairs (default: as many as {tr.steps:,} optimiser steps take)",
    )
    t.add_argument(
        "--batch-size",
        type=int,
        default=tr.batch_size,
        help="pairs per step and process (default: 64 on CPU, 256 on a GPU)",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=tr.threads,
        help="torch threads per process (default 0: the cores shared by this node's "
        "processes, at most half of them for one process)",
    )
    t.add_argument("--lr", type=float, default=tr.lr)
    t.add_argument(
        "--ema",
        type=float,
        default=tr.ema,
        help="keep a moving average of the weights with this decay (0: the last weights)",
    )
    t.add_argument(
        "--validation-fraction",
        type=float,
        default=d.validation_fraction,
        help="share of the training perturbations (cell types, when cell types are held out) "
        "kept out of training to fit what an unseen perturbation is predicted with "
        "(default 0.2; none with fewer than 4)",
    )
    t.add_argument("--n-genes", type=int, default=d.n_genes)
    t.add_argument("--min-cells", type=int, default=d.min_cells)
    t.add_argument(
        "--drop-rare",
        action="store_true",
        help="drop perturbations with fewer than --min-cells cells",
    )
    t.add_argument("--epsilon", type=float, default=o.epsilon, help="Sinkhorn regularisation")
    t.add_argument("--cost", choices=("euclidean", "cosine"), default=o.cost)
    t.add_argument("--pairing", choices=("ot", "random"), default=o.pairing)
    t.add_argument("--no-discrete", action="store_true", help="continuous bridge only")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--out", required=True, help="run folder to write")

    q = sub.add_parser("predict", help="predict perturbed cells with a trained run")
    q.add_argument("run_dir")
    q.add_argument("--perturbation", required=True)
    q.add_argument("--cell-type")
    q.add_argument("--n-cells", type=int)
    q.add_argument("--steps", type=int, default=50)
    q.add_argument("--trajectory", action="store_true", help="store x_t and d_t at every step")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument(
        "--out",
        required=True,
        help="output .h5ad: the run's genes, obs with the input's own keys (e.g. condition, "
        "cell_type) and the canonical ones, uns['departures']",
    )

    e = sub.add_parser("evaluate", help="score held-out conditions against baselines")
    e.add_argument("run_dir")
    e.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    e.add_argument(
        "--ablations",
        action="store_true",
        help="also train and score random_pairing and no_discrete",
    )
    e.add_argument(
        "--knowledge",
        help="a gene graph (gene_a,gene_b[,weight]) or gene-embedding table (gene,dim_1,...) "
        "CSV for the linear and nearest baselines (default: the shipped Gene Ontology table)",
    )
    e.add_argument("--steps", type=int, help="sampling steps (default: the run's, 50)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument(
        "--cell-eval",
        action="store_true",
        help="also score with Arc Institute's cell-eval (the Virtual Cell Challenge's metrics "
        "and score against control; pip install cell-eval)",
    )
    r = sub.add_parser(
        "demo-run",
        help="rebuild the shipped demo run (assets/demo-run): train the default demo model, "
        "or export a run trained on the demo",
    )
    r.add_argument("--from", dest="source", help="export this run folder instead of training")
    r.add_argument("--out", help="output folder (default: assets/demo-run)")
    r.add_argument("--seed", type=int, default=0)
    return p


def _app(args) -> int:
    """``streamlit run`` on the app's Home.py (the checkout's, or the copy an install ships)
    in the working directory, with the settings of the app's ``.streamlit/config.toml``."""
    import subprocess

    from . import paths

    command = [sys.executable, "-m", "streamlit", "run", str(paths.HOME)]
    command += _streamlit_flags(paths.STREAMLIT_CONFIG)
    return subprocess.call([*command, *args.streamlit_args])


def _streamlit_flags(config: Path) -> list[str]:
    """``config``'s settings as ``--section.option=value`` flags: Streamlit reads the file
    only from the working directory, and an installed app runs from anywhere."""
    import tomllib

    if not config.is_file():
        return []

    def flatten(table: dict, prefix: str) -> list[str]:
        flags = []
        for name, value in table.items():
            if isinstance(value, dict):  # e.g. [theme.sidebar]
                flags += flatten(value, f"{prefix}{name}.")
            else:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                flags.append(f"--{prefix}{name}={text}")
        return flags

    return flatten(tomllib.loads(config.read_text()), "")


def _demo_run(args) -> None:
    import torch

    from . import demo
    from .distributed import threads_for

    out = Path(args.out) if args.out else demo.DEMO_RUN
    if args.source:
        demo.export(args.source, out)
    else:
        torch.set_num_threads(threads_for(0))
        demo.build(out, seed=args.seed)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"wrote the demo run to {out} ({size:.1f} MB)", file=sys.stderr)


def _config(args, adata) -> RunConfig:
    from . import io
    from .config import BridgeConfig

    keys = io.detect_keys(
        adata,
        perturbation_key=args.perturbation_key,
        control=args.control,
        cell_type_key=args.cell_type_key,
    )
    data = DataConfig(
        perturbation_key=keys.perturbation_key,
        control=keys.control,
        cell_type_key=keys.cell_type_key,
        dose_key=args.dose_key,
        n_genes=args.n_genes,
        min_cells=args.min_cells,
        drop_rare=args.drop_rare,
        holdout=args.holdout or (),
        holdout_fraction=(
            args.holdout_fraction
            if args.holdout_fraction is not None
            else DataConfig.holdout_fraction
        ),
        holdout_cell_types=args.holdout_cell_type,
        validation_fraction=args.validation_fraction,
    )
    return RunConfig(
        data=data,
        ot=OTConfig(pairing=args.pairing, epsilon=args.epsilon, cost=args.cost),
        bridge=BridgeConfig(discrete=not args.no_discrete),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            ema=args.ema,
            device=args.device,
            threads=args.threads,
        ),
        seed=args.seed,
    )


def _train(args) -> None:
    import torch

    from . import io, runs
    from .distributed import threads_for

    # a training process caps its threads, so that several trainings and the app share the
    # machine (with a thread per core each, two trainings ran ~50x slower)
    torch.set_num_threads(threads_for(args.threads))

    if args.resume:  # the run's saved config is used; only the training settings change
        train = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            ema=args.ema,
            device=args.device,
            threads=args.threads,
        )
        runs.train(None, RunConfig(train=train), args.out, resume=True)
    else:
        adata = io.read(args.data) if args.data else io.load_demo()
        runs.train(adata, _config(args, adata), args.out)
    from .distributed import context

    if context().main:
        print(f"saved run to {args.out}", file=sys.stderr)


def _predict(args) -> None:
    from . import runs

    run = runs.open_run(args.run_dir)
    pred = runs.predict(
        run,
        args.perturbation,
        cell_type=args.cell_type,
        n_cells=args.n_cells,
        steps=args.steps,
        seed=args.seed,
        trajectory=args.trajectory,
        device=args.device,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pred.write_h5ad(out)
    print(f"wrote {pred.n_obs} predicted cells x {pred.n_vars} genes to {out}", file=sys.stderr)


def _evaluate(args) -> None:
    from . import calibration, runs
    from .distributed import threads_for
    from .evaluate import calibrate_run, evaluate_run
    from .model import atomic_write_text
    from .train import resolve_device

    run = runs.open_run(args.run_dir)
    ev = evaluate_run(
        run,
        ablations=args.ablations,
        seed=args.seed,
        steps=args.steps,
        device=str(resolve_device(args.device)),
        cell_eval=args.cell_eval,
        threads=threads_for(0),
        knowledge=args.knowledge,
    )
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    ev.save(out)
    print(ev.table().to_string(float_format=lambda v: f"{v:.4f}"))
    known = ev.settings.get("knowledge", {})
    if known.get("unknown"):
        print(
            f"no prior knowledge in {known['source']} of: {', '.join(known['unknown'])} "
            "(the linear and nearest baselines treat them as average perturbations)",
            file=sys.stderr,
        )
    if args.cell_eval:
        from .celleval import vcc_summary

        scores = ", ".join(f"{m} {v:.4f}" for m, v in vcc_summary(ev.metrics).items())
        print(f"VCC score of the means over held-out conditions, against control: {scores}")
    for s in ev.skipped:
        print(f"skipped {s['perturbation']} / {s['cell_type']}: {s['reason']}", file=sys.stderr)
    table = calibrate_run(
        run, seed=args.seed, steps=args.steps, device=str(resolve_device(args.device))
    )
    atomic_write_text(out / "calibration.csv", table.to_csv(index=False))
    print(
        "\ncalibration (medians; train_null: training conditions the perturbation does not change)"
    )
    print(calibration.summarize(table).to_string(float_format=lambda v: f"{v:.4f}"))
    print(
        f"wrote {out / 'metrics.csv'}, {out / 'summary.json'} and {out / 'calibration.csv'}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "app":  # the rest goes to `streamlit run`
        args.streamlit_args = [a for a in extra if a != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        commands = {
            "app": _app,
            "train": _train,
            "predict": _predict,
            "evaluate": _evaluate,
            "demo-run": _demo_run,
        }
        code = commands[args.command](args)
    except DeparturesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is saved (use --resume)", file=sys.stderr)
        return 130
    return code or 0
