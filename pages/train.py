"""Train: hyper-parameters, held-out perturbations, device; live progress, stop and resume.

Training runs in its own process (`departures_core.launch`): this page only reads the run
folder, so it stays responsive and leaving the page does not stop the run.
"""

from pathlib import Path

import streamlit as st

from app import run_panel, state
from departures_core import launch, registry
from departures_core.config import BridgeConfig, DataConfig, OTConfig, TrainConfig
from departures_core.errors import DeparturesError

st.title("Train")
run = state.current_run()
if run is not None:
    run_panel.render(run)
    st.divider()

ds, adata, keys = state.dataset(), state.adata(), state.obs_keys()
st.subheader("Start a new run")
if ds is None or keys is None:
    st.info("Load a dataset and map its columns on the Data page first.")
    st.page_link(str(state.PAGES_DIR / "data.py"), label="Go to Data", icon=":material/dataset:")
    st.stop()

d, t, o, b = DataConfig(), TrainConfig(), OTConfig(), BridgeConfig()
p = {}  # the form's values, named as launch.make_config names them
name = st.text_input(
    "Run name",
    value=registry.suggest_name(ds.short, state.runs_dir()),
    help="Letters, digits, '-', '_' and '.'; other characters become '-'.",
)
c1, c2, c3, c4 = st.columns(4)
p["epochs"] = c1.number_input(
    "Epochs",
    1,
    10_000,
    t.epochs,
    placeholder="auto",
    help=f"Passes over all pairs. Empty (auto): as many as {t.steps:,} optimiser steps take.",
)
p["batch_size"] = c2.number_input(
    "Batch size",
    8,
    8192,
    t.batch_size,
    placeholder="auto",
    help="Pairs per step. Empty (auto): 64 on CPU, 256 on a GPU (learning rate × 2).",
)
p["lr"] = c3.number_input("Learning rate", 1e-6, 1.0, t.lr, format="%.0e", help="AdamW.")
p["n_genes"] = c4.number_input(
    "Genes", 50, 50_000, d.n_genes, help="The perturbed genes, then the most variable genes."
)
p["epsilon"] = c1.number_input(
    "OT ε", 0.001, 10.0, o.epsilon, format="%.3f", help="Sinkhorn regularisation of the pairing."
)
p["cost"] = c2.selectbox("OT cost", ("euclidean", "cosine"), help="Distance to pair cells by.")
p["pairing"] = c3.selectbox("Pairing", ("ot", "random"), help="random: the paper's ablation.")
p["seed"] = c4.number_input("Seed", 0, 2**31 - 1, 0, help="Seeds split, pairing and network.")
p["discrete"] = st.checkbox(
    "On/off (discrete) bridge", b.discrete, help="Off: continuous bridge only (an ablation)."
)
p["drop_rare"] = st.session_state[state.DROP_RARE]
perts, default = launch.holdout_options(
    adata, keys, seed=p["seed"], fraction=d.holdout_fraction, drop_rare=p["drop_rare"]
)
p["holdout"] = st.multiselect(
    "Held-out perturbations: never trained on; the model must predict them",
    perts,
    default=default,
    key=f"holdout-{ds.key}-{keys}-{p['seed']}",
    help=f"Default: a seeded {d.holdout_fraction:.0%} of the perturbations.",
)
p["device"] = st.radio("Device", ("auto", "cpu", "cuda"), horizontal=True)
st.caption(f"`auto` trains on **{state.device_label()}**.")

with st.expander("Train the same run on a GPU server (torchrun)", icon=":material/dns:"):
    gpus = st.number_input("GPUs (processes)", 1, 64, 8, key="torchrun-gpus")
    try:
        command = launch.torchrun_command(
            launch.make_config(keys, **p), Path(ds.path).name, name, int(gpus)
        )
    except DeparturesError as exc:
        st.error(str(exc))
    else:
        st.code(command, language="bash")
        st.caption(
            "Install Departures on the server (`pip install -r requirements.txt`), copy the "
            "dataset next to it and run this: one process per GPU, each pairing and training "
            "its share of the conditions (gradients averaged with NCCL). Across several "
            "machines add torchrun's `--nnodes` and `--rdzv-endpoint` flags. The run folder "
            f"is an ordinary run: copy `runs/{name}` into `{state.runs_dir()}` to open it here."
        )

if st.button("Start training", type="primary", icon=":material/rocket_launch:"):
    config = launch.make_config(keys, **p)
    if state.attempt("start", state.start_training, name, config) is not None:
        st.rerun()
state.error("start")
