"""The live view of one training run: progress, loss curves, stop / resume, log.

Reads only the run folder (the run trains in its own process), refreshed every second by a
fragment while the run is active.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from app.sidebar import code, escape
from departures_core import figures, launch, registry

LABELS = {
    "starting": "Preparing the data (reading, normalising, choosing genes)…",
    "running": "Training",
    "stopping": "Stopping after the current step…",
    "finished": "Finished",
    "stopped": "Stopped (resumable)",
    "cancelled": "Cancelled before training started",
    "failed": "Failed",
}


def render(run_dir: Path) -> None:
    """Draw the panel; it polls the run folder every second while the run is active."""
    active = registry.status(run_dir).active
    st.fragment(run_every=1.0 if active else None)(_panel)(run_dir, active)


def _panel(run_dir: Path, polling: bool) -> None:
    status = registry.status(run_dir)
    if status.active != polling:  # started or ended since the page was drawn: redraw it all
        st.rerun()
    st.subheader(f"Run {code(run_dir.name)}")
    where = f" on {status.device.upper()}" if status.device else ""
    total = f"{status.total:,}" if status.total else "?"
    text = f"{LABELS[status.state]} · epoch {status.epoch} · step {status.step:,} of {total}"
    st.progress(status.fraction, text=text + where if status.total else LABELS[status.state])
    if status.error:
        st.error(f"Training failed: {escape(status.error)}", icon=":material/error:")
    history = state.live_history(run_dir, status)
    if len(history):
        st.plotly_chart(figures.loss_curves(history), width="stretch")
    elif status.active:
        st.caption("Loss curves appear once training has taken its first steps.")
    state.error("run")
    _buttons(run_dir, status)
    split = registry.read_json(run_dir / "split.json").get("holdout", [])
    if split:
        st.caption(f"Held out ({len(split)}): {', '.join(map(escape, split))}")
    with st.expander("Training log"):
        st.code(registry.log_tail(run_dir), language=None)


def _buttons(run_dir: Path, status: registry.RunStatus) -> None:
    if status.active:
        st.button(
            "Stop",
            icon=":material/stop:",
            on_click=launch.stop,
            args=(run_dir,),
            help="Stops after the current step and saves a checkpoint you can resume.",
        )
    elif status.state in ("stopped", "failed") and registry.is_run(run_dir):
        st.button(
            "Resume",
            icon=":material/play_arrow:",
            on_click=state.attempt,
            args=("run", launch.resume, run_dir),
        )
    elif status.state == "finished":
        left, right = st.columns([1, 3], vertical_alignment="bottom")
        more = left.number_input(
            "Continue to epoch", status.epoch + 1, value=status.epoch + 10, key=f"more-{run_dir}"
        )
        right.button(
            "Train more epochs",
            icon=":material/fast_forward:",
            on_click=state.attempt,
            args=("run", launch.resume, run_dir),
            kwargs={"epochs": int(more)},
        )
