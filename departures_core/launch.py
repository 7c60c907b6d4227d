"""Launch, stop and resume training runs in the background; stage uploaded datasets.

Training runs in a separate process (``python -m departures_core train``) started in its own
session, so it outlives the page that started it, navigation does not stop it, and several
can run at once. Progress is read back with `departures_core.registry`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

from . import keys, paths
from .config import BridgeConfig, DataConfig, OTConfig, RunConfig, TrainConfig
from .data import make_split, parse_dose
from .errors import DeparturesError, RunError
from .io import rare_perturbations, validate
from .registry import (
    LAUNCH_FILE,
    LOG_FILE,
    UPLOADS,
    RunStatus,
    is_run,
    read_json,
    run_path,
    safe_name,
    status,
)


def check_dataset(adata, obs_keys, *, min_cells: int = 3, drop_rare: bool = False) -> dict:
    """Raise the error training would raise on ``adata`` with ``obs_keys``, before launching.

    Returns the perturbations that ``drop_rare`` removes (name -> cells), empty otherwise.
    Doses must be numbers (``"1+1"`` per-part doses of a combination are allowed).
    """
    validate(adata, obs_keys, min_cells=0 if drop_rare else min_cells)
    rare = rare_perturbations(adata, obs_keys, min_cells=min_cells) if drop_rare else {}
    if obs_keys.dose_key:
        for value in adata.obs[obs_keys.dose_key].astype(str).unique():
            parse_dose(value)
    return rare


def holdout_options(
    adata,
    obs_keys,
    *,
    seed: int,
    fraction: float = 0.25,
    drop_rare: bool = False,
    min_cells: int = 3,
) -> tuple[list[str], list[str]]:
    """``(perturbations, default hold-out)``: the labels a run can hold out and the seeded
    fraction the command line would pick with ``--holdout-fraction``."""
    labels = adata.obs[obs_keys.perturbation_key].astype(str)
    perts = sorted(set(labels) - {obs_keys.control})
    if drop_rare:
        rare = rare_perturbations(adata, obs_keys, min_cells=min_cells)
        perts = [p for p in perts if p not in rare]
    if len(perts) < 2:
        return perts, []
    split = make_split(perts, ["all"], DataConfig(holdout_fraction=fraction), seed=seed)
    return perts, list(split.holdout)


# ------------------------------------------------------------------ uploads
def stage_upload(fileobj, name: str, dest: str | Path) -> Path:
    """Write an uploaded file to ``dest/<content hash>/<safe name>`` and return its path.

    ``fileobj`` is bytes or a binary file object. The same content uploaded twice maps to
    the same path, so caches keyed on it are reused.
    """
    safe = safe_name(Path(name).name)  # refuse an unusable name before writing anything
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".incoming-{os.getpid()}-{threading.get_ident()}"
    digest = hashlib.sha1()
    try:
        with open(tmp, "wb") as out:
            if isinstance(fileobj, bytes | bytearray):
                fileobj = BytesIO(fileobj)
            while chunk := fileobj.read(1 << 22):
                digest.update(chunk)
                out.write(chunk)
        final = dest / digest.hexdigest()[:12] / safe
        final.parent.mkdir(exist_ok=True)
        if not final.exists():
            tmp.replace(final)
        return final
    finally:
        tmp.unlink(missing_ok=True)  # already moved, or a failed write: no partial file left


def _link_or_copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
    return dst


# ------------------------------------------------------------------ launching
def make_config(
    obs_keys,
    *,
    holdout=(),
    drop_rare: bool = False,
    n_genes: int = DataConfig.n_genes,
    epochs: int | None = TrainConfig.epochs,
    batch_size: int | None = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    device: str = TrainConfig.device,
    epsilon: float = OTConfig.epsilon,
    cost: str = OTConfig.cost,
    pairing: str = OTConfig.pairing,
    discrete: bool = BridgeConfig.discrete,
    seed: int = 0,
) -> RunConfig:
    """A `RunConfig` from the app's flat form: the library defaults for everything else.

    ``holdout`` lists the held-out perturbations explicitly (empty: hold none out).
    """
    data = DataConfig(
        perturbation_key=obs_keys.perturbation_key,
        control=obs_keys.control,
        cell_type_key=obs_keys.cell_type_key,
        dose_key=obs_keys.dose_key,
        n_genes=int(n_genes),
        drop_rare=bool(drop_rare),
        holdout=tuple(sorted(holdout)),
        holdout_fraction=DataConfig.holdout_fraction if holdout else 0.0,
    )
    return RunConfig(
        data=data,
        ot=OTConfig(epsilon=float(epsilon), cost=cost, pairing=pairing),
        bridge=BridgeConfig(discrete=bool(discrete)),
        train=TrainConfig(
            epochs=int(epochs) if epochs else None,
            batch_size=int(batch_size) if batch_size else None,
            lr=float(lr),
            device=device,
        ),
        seed=int(seed),
    )


def train_args(config: RunConfig) -> list[str]:
    """CLI options for ``python -m departures_core train`` that reproduce ``config``."""
    d, t, o = config.data, config.train, config.ot
    if any("," in p for p in d.holdout):
        raise DeparturesError(
            "A hold-out perturbation name contains ',', which the command "
            "line cannot pass; rename it in obs first."
        )
    args = [f"--perturbation-key={d.perturbation_key}", f"--control={d.control}"]
    args += [f"--cell-type-key={d.cell_type_key}"] if d.cell_type_key else []
    args += [f"--dose-key={d.dose_key}"] if d.dose_key else []
    if d.holdout:
        args.append(f"--holdout={','.join(d.holdout)}")
    else:
        args.append(f"--holdout-fraction={d.holdout_fraction}")
    if d.holdout_cell_types:
        args.append(f"--holdout-cell-type={','.join(d.holdout_cell_types)}")
    args += [f"--n-genes={d.n_genes}", f"--min-cells={d.min_cells}"]
    args += ["--drop-rare"] if d.drop_rare else []
    args += [f"--epochs={t.epochs}"] if t.epochs is not None else []
    args += [f"--batch-size={t.batch_size}"] if t.batch_size is not None else []
    args += [
        f"--lr={t.lr}",
        f"--device={t.device}",
        f"--epsilon={o.epsilon}",
        f"--cost={o.cost}",
        f"--pairing={o.pairing}",
        f"--seed={config.seed}",
    ]
    args += [] if config.bridge.discrete else ["--no-discrete"]
    return args


def torchrun_command(config: RunConfig, data_file: str, run_name: str, processes: int = 8) -> str:
    """The shell command that trains ``config`` on a GPU server with ``processes`` GPUs
    (`distributed`): the same options as the app's training, on CUDA, into ``runs/NAME``."""
    import dataclasses
    import shlex

    on_gpu = config.replace(train=dataclasses.replace(config.train, device="cuda"))
    words = ["torchrun", f"--nproc_per_node={processes}", "-m", "departures_core", "train"]
    words += [data_file, *train_args(on_gpu), f"--out=runs/{run_name}"]
    return " ".join(shlex.quote(w) for w in words)


def _spawn(run_dir: Path, argv: list[str], info: dict) -> int:
    # a checkout is put on the path (it may not be installed); an install imports as it is
    importable = [str(paths.CHECKOUT)] if paths.CHECKOUT is not None else []
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",  # a native crash leaves a traceback in train.log
        "PYTHONPATH": os.pathsep.join(filter(None, [*importable, os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "departures_core", "train", *argv]
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command,
            cwd=paths.work_dir(),  # relative data paths resolve as in the app
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    info = {**info, "pid": proc.pid, "command": command, "started": time.time()}
    _write_json(run_dir / LAUNCH_FILE, info)
    # Reap the child so it does not linger as a zombie; record how it ended.
    threading.Thread(target=_reap, args=(proc, run_dir / LAUNCH_FILE, info), daemon=True).start()
    return proc.pid


def _reap(proc: subprocess.Popen, path: Path, info: dict) -> None:
    code = proc.wait()
    if read_json(path).get("pid") == proc.pid:  # a later resume may own the file now
        _write_json(path, {**info, "returncode": code, "ended": time.time()})


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def launch(
    runs_dir: str | Path,
    name: str,
    config: RunConfig,
    data_path: str | Path,
    *,
    dataset: str = "",
    copy_data: bool = False,
) -> Path:
    """Start training run ``name`` on ``data_path`` in the background; return its folder.

    With ``copy_data`` the data file is first linked (or copied) into ``<run>/uploads/`` so
    the run keeps its input even when the staged upload is removed.
    """
    run_dir = run_path(runs_dir, name)
    if run_dir.exists():
        raise DeparturesError(
            f"A run named '{run_dir.name}' exists already in {runs_dir}; choose another name."
        )
    run_dir.mkdir(parents=True)
    data_path = Path(data_path)
    if copy_data:
        data_path = _link_or_copy(data_path, run_dir / UPLOADS / data_path.name)
    _spawn(
        run_dir,
        [str(data_path), *train_args(config), f"--out={run_dir}"],
        {"dataset": dataset or data_path.name, "data": str(data_path)},
    )
    return run_dir


def resume(run_dir: str | Path, *, epochs: int | None = None) -> int:
    """Continue a stopped (or finished, with more ``epochs``) run; returns the new pid."""
    run_dir = Path(run_dir)
    st = status(run_dir)
    if st.active:
        raise DeparturesError(f"Run '{run_dir.name}' is still {st.state}.")
    if not is_run(run_dir):
        raise RunError(f"Run '{run_dir.name}' has no checkpoint to resume from; start it again.")
    t = _saved_config(run_dir).train
    more = epochs or t.epochs
    argv = [
        "--resume",
        *([f"--epochs={more}"] if more else []),
        *([f"--batch-size={t.batch_size}"] if t.batch_size is not None else []),
        f"--lr={t.lr}",
        f"--device={t.device}",
        f"--out={run_dir}",
    ]
    (run_dir / keys.STOP_FILE).unlink(missing_ok=True)
    previous = read_json(run_dir / LAUNCH_FILE)
    return _spawn(
        run_dir,
        argv,
        {"dataset": previous.get("dataset", ""), "data": previous.get("data", ""), "resume": True},
    )


def _saved_config(run_dir: Path) -> RunConfig:
    """The run's config, after checking that its model loads (`RunError` before a launch that
    could only fail). The checkpoint's copy is used when ``config.json`` is damaged."""
    from .train import load_model

    model, _ = load_model(run_dir)
    if not (run_dir / keys.DATA_FILE).is_file():
        raise RunError(
            f"{run_dir} has no {keys.DATA_FILE} (the data the run was trained on), so it "
            "cannot be resumed; copy the whole run folder, or train again."
        )
    saved = read_json(run_dir / keys.CONFIG_FILE)
    if not isinstance(saved.get("train"), dict):
        return model.config
    try:
        return RunConfig.from_dict(saved)
    except (TypeError, ValueError, AttributeError):
        return model.config


def stop(run_dir: str | Path) -> None:
    """Ask a run to stop after its current step (it saves a checkpoint first).

    A run still preparing its data has nothing to save: its process is ended at once.
    """
    run_dir = Path(run_dir)
    starting = status(run_dir).state == "starting"
    (run_dir / keys.STOP_FILE).touch()
    if starting:  # training would delete the STOP file when it starts
        try:
            os.killpg(read_json(run_dir / LAUNCH_FILE)["pid"], signal.SIGTERM)
        except (OSError, KeyError):
            pass


def wait(run_dir: str | Path, *, timeout: float = 300, poll: float = 0.5) -> RunStatus:
    """Block until the run is no longer active (or ``timeout`` seconds); its last status."""
    end = time.monotonic() + timeout
    st = status(run_dir)
    while st.active and time.monotonic() < end:
        time.sleep(poll)
        st = status(run_dir)
    return st
