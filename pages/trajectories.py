"""Trajectories: control cells carried to predicted perturbed cells by both bridges, animated
over the UMAP — play, pause, scrub time; colour by time, a gene's expression or its on/off
state; a presentation mode for talks; exports as HTML and GIF for slides."""

import re

import streamlit as st

from app import links, run_state, state, widgets
from departures_core import explore, trajectories
from departures_core.errors import DeparturesError

MAP_SEED = 0  # one UMAP per condition, whatever cells are sampled on it
MAX_CELLS = trajectories.SVG_MAX_CELLS  # bench/animation.py: ~150 ms a frame change here
SPEEDS = {"slow": 400, "normal": 200, "fast": 100}  # ms per frame
# choice: (trajectories.scene's mode, its name in links: ?colour=)
COLOUR_BY = {
    "time": ("time", "time"),
    "gene expression": ("expression", "expression"),
    "gene on/off": ("on/off", "onoff"),
}
LINK_COLOURS = {name: label for label, (_, name) in COLOUR_BY.items()}
LINK_PRESENTATION = {"1": True, "0": False}  # ?presentation=

row = links.header("Trajectories")
links.seed("traj-present", links.PRESENTATION, LINK_PRESENTATION, what="a presentation setting")
links.seed("traj-mode", links.COLOUR, LINK_COLOURS, what="a colouring of this view")
presentation = row.toggle(
    "Presentation", key="traj-present", help="Hide the controls and enlarge the figure."
)
run = run_state.trained_run()
if run is None:
    st.stop()
table = run_state.conditions(*run_state.run_key(run))
controls = st.expander("Controls", icon=":material/tune:") if presentation else st.container()
with controls:
    cell_type, pert = widgets.condition_picker(table, key="trajectories")
    n_control = int(table.loc[table["cell_type"] == cell_type, "n_control"].iloc[0])
    c_cells, c_seed, c_speed, c_start = st.columns([2, 1, 2, 2], vertical_alignment="bottom")
    n_cells = c_cells.number_input(
        "Cells",
        10,
        MAX_CELLS,
        min(n_control, MAX_CELLS),
        step=50,
        key="traj-cells",
        help=f"Each starts from a control cell of {cell_type} ({n_control:,} there; drawn "
        "with replacement when you ask for more). Thousands of cells take a minute or more "
        "the first time (simulating, then placing every frame); each choice is kept.",
    )
    seed = c_seed.number_input("Seed", 0, 2**31 - 1, 0, key="traj-seed")
    speed = c_speed.select_slider("Speed", list(SPEEDS), "normal", key="traj-speed")
    show_start = c_start.checkbox("Show the control (start) cells", key="traj-start")

try:
    with st.spinner(f"Simulating the bridges of {n_cells:,} cells…"):
        cells = run_state.condition_cells(
            run, pert, cell_type, n_cells=int(n_cells), seed=int(seed), trajectory=True
        )
    with st.spinner("Fitting the UMAP (the first one takes a minute)…"):
        cmap = run_state.cell_map(run, [pert], cell_type, seed=MAP_SEED)
    steps = trajectories.frame_steps(len(cells.simulation.t))
    coords = run_state.trajectory_frames(run, cmap, cells, steps)
    target = run_state.placed(run, cmap, cells, "observed")
    start = run_state.placed(run, cmap, cells, "control") if show_start else None
except DeparturesError as exc:
    state.show_error(exc)
    st.stop()
if cells.notice:
    st.warning(cells.notice, icon=":material/warning:")
change = explore.top_changes(cells, n=len(cells.genes)).set_index("gene")
gene_key = f"traj-gene-{pert}-{cell_type}"
if st.session_state.get("traj-mode", "time") != "time":
    links.seed(gene_key, links.GENE, {g: g for g in change.index}, what="a gene of this run")

with controls:
    c_mode, c_gene = st.columns([2, 3])
    colour_by = c_mode.radio("Colour by", list(COLOUR_BY), horizontal=True, key="traj-mode")
    mode, colour = COLOUR_BY[colour_by]
    gene = None
    if mode != "time":
        gene = c_gene.selectbox(
            "Gene (largest observed change first)",
            change.index.tolist(),
            format_func=lambda g: f"{g} (observed {change.at[g, 'observed_change']:+.2f})",
            key=gene_key,
        )
links.write(colour=colour, gene=gene, presentation="1" if presentation else None)
links.share(row, "trajectories")
sc = trajectories.scene(cells, coords, steps, mode=mode, gene=gene, target=target, start=start)
fig = trajectories.animation(sc, presentation=presentation, frame_ms=SPEEDS[speed])
# theme=None: the chart looks as its HTML export will (and presentation fonts are kept)
st.plotly_chart(fig, width="stretch", theme=None, key="traj-chart", config={"displaylogo": False})

if presentation:
    st.stop()  # a clean screen for talks: no caption, no downloads
st.caption(
    f"{len(steps)} of the sampler's {len(cells.simulation.t)} time points, each placed with "
    "the UMAP's `transform`. A cell at time t shows max(x_t, 0) · d_t: its expression "
    "bridge gated by its on/off bridge, as in the prediction at t = 1."
)
name = re.sub(r"[^\w+.-]", "_", f"trajectories-{pert}-{cell_type}-{mode}")
c_html, c_gif, c_get, _ = st.columns([1, 1, 1, 2])
c_html.download_button(
    "Download HTML",
    lambda: trajectories.to_html(fig),
    f"{name}.html",
    "text/html",
    on_click="ignore",
    icon=":material/download:",
    help="One self-contained file (plotly.js inside): opens offline, plays in a talk.",
)
gif_key = (cells.request, mode, gene, show_start, speed)
if c_gif.button("Make a GIF", icon=":material/gif_box:", help="For slides (~30 frames)."):
    with st.spinner(f"Drawing {len(steps)} frames…"):
        gif = trajectories.to_gif(sc, frame_ms=SPEEDS[speed])
    st.session_state["traj-gif"] = (gif_key, gif)
made = st.session_state.get("traj-gif")
if made and made[0] == gif_key:
    c_get.download_button(
        "Download GIF", made[1], f"{name}.gif", "image/gif", icon=":material/download:"
    )
