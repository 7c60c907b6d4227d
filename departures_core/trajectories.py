"""Bridge trajectories on a 2-D map: which time points become frames, where the cells are at
each, what colours them, and the animation built from them — a plotly figure for the app and
for a self-contained HTML file, an animated GIF (matplotlib) for slides. Never imports
streamlit.

The state shown at time t is what the model predicts at t = 1: ``max(x_t, 0) * d_t``.
Frames are time points the sampler computed (no interpolation); each is placed on the map
with the fitted UMAP's ``transform``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import plotly.graph_objects as go

from .errors import ConfigError
from .figures import CONTROL_COLOUR, LAYOUT

N_FRAMES = 26  # of the 51 time points of the default 50-step sampler: every other one
MAX_CELLS = 5000  # moving points per frame; bench/animation.py measured up to here
SVG_MAX_CELLS = 3000  # SVG up to here, WebGL above (see `animation`)
MAX_GIF_FRAMES = 30
MODES = ("time", "expression", "on/off")
TARGET_COLOUR = "#f28e8e"  # the observed perturbed cells the bridge should reach
OFF_ON = ("#a6cee3", "#1f78b4")  # pale when off, strong when on; neither grey nor pink


def frame_steps(n_times: int, n_frames: int = N_FRAMES) -> np.ndarray:
    """Indices of ``n_frames`` evenly spaced time points out of ``n_times`` (first and last
    always included; fewer when ``n_times`` is smaller).

    Returns
    -------
    ndarray of int, shape (<= n_frames,), increasing
    """
    if n_times < 2:
        raise ConfigError(f"A trajectory needs at least 2 time points, got {n_times}.")
    if n_frames < 2:
        raise ConfigError(f"An animation needs at least 2 frames, got {n_frames}.")
    return np.unique(np.round(np.linspace(0, n_times - 1, n_frames)).astype(int))


def _check_paths(sim) -> None:
    if sim.x_path is None or sim.d_path is None:
        raise ConfigError(
            "These cells were simulated without their trajectories; ask for trajectory=True."
        )


def expression_at(sim, step: int) -> np.ndarray:
    """The cells' expression at time point ``step``: ``max(x_t, 0) * d_t``, shape (n, genes)."""
    _check_paths(sim)
    return np.maximum(sim.x_path[step], 0.0) * sim.d_path[step]


def place_frames(
    sim, place: Callable[[np.ndarray], np.ndarray], steps, *, progress=None
) -> np.ndarray:
    """Positions of the cells at each of ``steps`` on a map, one ``place`` call per frame.

    place : callable, (n, genes) -> (n, 2), e.g. `explore.CellMap.place`
    progress : callable (done, total), optional, called after each frame
    Returns an array of shape (len(steps), n, 2), float32.
    """
    out = []
    for i, step in enumerate(steps):
        out.append(np.asarray(place(expression_at(sim, int(step))), np.float32))
        if progress is not None:
            progress(i + 1, len(steps))
    return np.stack(out)


@dataclass(frozen=True)
class Scene:
    """Everything an animation draws. ``coords`` and ``colour`` have one row per frame.

    t : ndarray, shape (n_frames,)
    coords : ndarray, shape (n_frames, n_cells, 2)
    colour : ndarray, shape (n_frames, n_cells) — t, a gene's expression, or its 0/1 state
    mode : one of `MODES`; label : what ``colour`` is (a gene name, or "t")
    target, start : ndarray, shape (m, 2), optional — observed perturbed cells and the
        control cells the bridge starts from, drawn still, underneath
    """

    t: np.ndarray
    coords: np.ndarray
    colour: np.ndarray
    mode: str
    label: str
    target: np.ndarray | None = None
    start: np.ndarray | None = None
    title: str = ""
    target_name: str = "observed (target)"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"Colour mode must be one of {', '.join(MODES)}; got '{self.mode}'.")
        f, n = len(self.t), self.coords.shape[1] if self.coords.ndim == 3 else -1
        if self.coords.shape != (f, n, 2) or self.colour.shape != (f, n):
            raise ConfigError(
                f"Shapes disagree: t {self.t.shape}, coords {self.coords.shape} (want "
                f"(frames, cells, 2)), colour {self.colour.shape} (want (frames, cells))."
            )
        if f < 2 or n < 1:
            raise ConfigError(f"An animation needs >= 2 frames and >= 1 cell; got {f} and {n}.")
        if n > MAX_CELLS:
            raise ConfigError(
                f"{n:,} cells per frame is too many to animate; at most {MAX_CELLS:,}."
            )
        if not (np.isfinite(self.coords).all() and np.isfinite(self.colour).all()):
            raise ConfigError("Trajectory positions or colours contain NaN or inf.")

    @property
    def n_cells(self) -> int:
        return self.coords.shape[1]

    def ranges(self, pad: float = 0.05) -> tuple[list[float], list[float]]:
        """Axis ranges covering every frame and both clouds, padded: the view never jumps."""
        pts = [self.coords.reshape(-1, 2)] + [c for c in (self.target, self.start) if c is not None]
        pts = np.concatenate(pts)
        span = np.maximum(pts.max(0) - pts.min(0), 1e-6) * pad
        lo, hi = (pts.min(0) - span).tolist(), (pts.max(0) + span).tolist()
        return [lo[0], hi[0]], [lo[1], hi[1]]

    def colour_range(self) -> tuple[float, float]:
        if self.mode == "expression":
            return 0.0, max(float(self.colour.max()), 1e-3)
        return 0.0, 1.0


def scene(
    cells,
    coords: np.ndarray,
    steps,
    *,
    mode: str = "time",
    gene: str | None = None,
    target=None,
    start=None,
) -> Scene:
    """The `Scene` of ``cells`` (`explore.ConditionCells` with a trajectory) at ``steps``.

    coords : ndarray, shape (len(steps), n_cells, 2) — from `place_frames`
    gene : needed for the "expression" and "on/off" modes
    """
    sim, steps = cells.simulation, np.asarray(steps, int)
    _check_paths(sim)
    if mode not in MODES:
        raise ConfigError(f"Colour mode must be one of {', '.join(MODES)}; got '{mode}'.")
    t = np.asarray(sim.t, np.float32)[steps]
    n = sim.x_path.shape[1]
    if mode == "time":
        colour, label = np.repeat(t[:, None], n, axis=1), "t"
    elif gene is None:
        raise ConfigError(f"Colour mode '{mode}' needs a gene.")
    else:
        g = cells.gene_index(gene)
        colour = sim.d_path[steps, :, g].astype(np.float32)
        if mode == "expression":
            colour = colour * np.maximum(sim.x_path[steps, :, g], 0.0)
        colour, label = colour.astype(np.float32), gene
    return Scene(
        t,
        np.asarray(coords, np.float32),
        colour,
        mode,
        label,
        target=None if target is None else np.asarray(target, np.float32),
        start=None if start is None else np.asarray(start, np.float32),
        title=f"{cells.label}: {n:,} cells from control (t = 0) to prediction (t = 1)",
        target_name=f"observed {cells.perturbation} (target)",
    )


# ------------------------------------------------------------------ plotly
def _colour_marker(sc: Scene, size: float) -> dict:
    lo, hi = sc.colour_range()
    outline = {"width": 0.5, "color": "rgba(40, 40, 40, 0.5)"}  # yellow on white needs it
    marker = {"size": size, "cmin": lo, "cmax": hi, "opacity": 0.9, "line": outline}
    if sc.mode == "on/off":
        off, on = OFF_ON
        scale = [[0.0, off], [0.5, off], [0.5, on], [1.0, on]]
        bar = {"title": {"text": sc.label}, "tickvals": [0.25, 0.75], "ticktext": ["off", "on"]}
    else:
        scale, bar = "Viridis", {"title": {"text": sc.label}}
    return {**marker, "colorscale": scale, "colorbar": {**bar, "len": 0.6, "thickness": 14}}


def _still(points: np.ndarray | None, name: str, colour: str, size: float, opacity: float):
    if points is None:
        return None
    return go.Scatter(
        x=points[:, 0],
        y=points[:, 1],
        mode="markers",
        name=f"{name} ({len(points):,})",
        marker={"size": size, "color": colour, "opacity": opacity},
        hoverinfo="skip",
    )


def _controls(sc: Scene, frame_ms: int, redraw: bool, font: int, big: bool) -> dict:
    go_to = {"mode": "immediate", "transition": {"duration": 0}}
    play = {**go_to, "frame": {"duration": frame_ms, "redraw": redraw}, "fromcurrent": True}
    pause = {**go_to, "frame": {"duration": 0, "redraw": False}}
    buttons = {
        "type": "buttons",
        "direction": "left",
        "showactive": False,
        "x": 0.0,
        "y": 0.0,
        "xanchor": "left",
        "yanchor": "top",
        "pad": {"t": 45, "r": 10},
        "font": {"size": font},
        "buttons": [
            {"label": "▶ Play", "method": "animate", "args": [None, play]},
            {"label": "❚❚ Pause", "method": "animate", "args": [[None], pause]},
        ],
    }
    slider = {
        "active": 0,
        "x": 0.22 + 0.04 * big,  # clear of the buttons
        "len": 0.78 - 0.04 * big,
        "y": 0.0,
        "yanchor": "top",
        "pad": {"t": 30, "b": 0},
        "currentvalue": {"prefix": "t = ", "font": {"size": font + 2}, "xanchor": "right"},
        "font": {"size": max(9, font - 6)},
        "steps": [
            {
                "label": f"{t:.2f}",
                "method": "animate",
                "args": [[str(i)], {**go_to, "frame": {"duration": 0, "redraw": redraw}}],
            }
            for i, t in enumerate(sc.t)
        ],
    }
    return {"updatemenus": [buttons], "sliders": [slider]}


def animation(
    sc: Scene, *, presentation: bool = False, webgl: bool | None = None, frame_ms: int = 200
) -> go.Figure:
    """The cells of ``sc`` moving from t = 0 to t = 1 over the still target (and start) cloud,
    with play / pause buttons and a time slider; axis ranges fixed over all frames.

    Trace type, chosen by measurement (bench/animation.py: median frame change inside
    ``st.plotly_chart``, headless Chromium on 2 busy cores, no GPU, 26 frames, 3 play-throughs;
    ±20 % between runs):

    ======  =============  =================
    points  scatter (SVG)  scattergl (WebGL)
    ======  =============  =================
    1,000   58 ms          116 ms
    3,000   144 ms         148 ms
    5,000   239 ms         201 ms
    ======  =============  =================

    ``webgl=None`` (default) draws SVG ``scatter`` up to `SVG_MAX_CELLS` cells — as fast or
    faster there, and its frames change without redrawing the whole plot — and WebGL
    ``scattergl`` (redrawn every frame) above. Either keeps up with the default 200 ms a
    frame. Frames change without a tween, so nothing is drawn that the sampler did not
    compute. (The ~800 ms noted for SVG in ENVIRONMENT.md was a px animation: its Play waits
    500 ms a frame and tweens for 500 ms.)

    ``presentation`` enlarges fonts, markers and the figure for talks.
    """
    webgl = sc.n_cells > SVG_MAX_CELLS if webgl is None else webgl
    if frame_ms < 10:
        raise ConfigError(f"frame_ms must be >= 10, got {frame_ms}.")
    font, size = (20, 8) if presentation else (13, 5)
    still = [
        _still(sc.start, "control (start)", CONTROL_COLOUR, size, 0.3),
        _still(sc.target, sc.target_name, TARGET_COLOUR, size + 2, 0.45),
    ]
    traces = [s for s in still if s is not None]
    kind = go.Scattergl if webgl else go.Scatter
    hover = f"{sc.label}: %{{marker.color:.2f}}<extra></extra>"

    def moving(i: int):
        return kind(
            x=sc.coords[i, :, 0],
            y=sc.coords[i, :, 1],
            mode="markers",
            name=f"predicted cells ({sc.n_cells:,})",
            marker={**_colour_marker(sc, size), "color": sc.colour[i]},
            hovertemplate=hover,
        )

    index = len(traces)
    frames = [go.Frame(name=str(i), data=[moving(i)], traces=[index]) for i in range(len(sc.t))]
    fig = go.Figure(data=[*traces, moving(0)], frames=frames)
    xr, yr = sc.ranges()
    fig.update_layout(
        **{**LAYOUT, "margin": {"l": 10, "r": 10, "t": 90 if presentation else 70, "b": 110}},
        title={"text": sc.title, "font": {"size": font + 4}},
        height=860 if presentation else 620,
        font={"size": font},
        legend={
            "orientation": "h",
            "x": 0,
            "y": 1.0,
            "yanchor": "bottom",
            "itemsizing": "constant",
        },
        uirevision=sc.title,
        **_controls(sc, frame_ms, webgl, font, presentation),
    )
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "autorange": False}
    fig.update_xaxes(title="UMAP 1", range=xr, **axis)
    fig.update_yaxes(title="UMAP 2", range=yr, **axis)
    return fig


def to_html(fig: go.Figure) -> bytes:
    """A self-contained HTML page of ``fig`` (plotly.js inlined: works offline, ~5 MB)."""
    html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return html.encode("utf-8")


# ------------------------------------------------------------------ GIF
def _gif_figure(sc: Scene, size: tuple[float, float], dpi: int):
    """A matplotlib figure of ``sc``'s first frame: (figure, moving dots, heading)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.03, 0.03, 0.78, 0.84))
    for pts, colour, s, alpha, name in (
        (sc.start, CONTROL_COLOUR, 8, 0.3, "control (start)"),
        (sc.target, TARGET_COLOUR, 14, 0.45, sc.target_name),
    ):
        if pts is not None:
            ax.scatter(pts[:, 0], pts[:, 1], s=s, c=colour, alpha=alpha, lw=0, label=name)
    lo, hi = sc.colour_range()
    dots = ax.scatter(
        *sc.coords[0].T,
        s=9,
        c=sc.colour[0],
        cmap=ListedColormap(OFF_ON) if sc.mode == "on/off" else "viridis",
        vmin=lo,
        vmax=hi,
        edgecolors=(0.16, 0.16, 0.16, 0.5),
        linewidths=0.3,
        label="predicted cells",
    )
    bar = fig.colorbar(dots, cax=fig.add_axes((0.84, 0.15, 0.03, 0.6)))
    bar.set_label(sc.label)
    if sc.mode == "on/off":
        bar.set_ticks([0.25, 0.75], labels=["off", "on"])
    xr, yr = sc.ranges()
    ax.set(xlim=xr, ylim=yr, xticks=[], yticks=[])
    ax.legend(loc="upper left", fontsize=7, frameon=False, markerscale=1.5)
    return fig, dots, fig.suptitle("", x=0.03, ha="left", fontsize=10)


def to_gif(
    sc: Scene,
    *,
    frame_ms: int = 200,
    dpi: int = 80,
    max_frames: int = MAX_GIF_FRAMES,
    size: tuple[float, float] = (7.0, 5.5),
) -> bytes:
    """An animated GIF of ``sc`` (at most ``max_frames`` frames, evenly chosen; the last one
    held for a second) drawn with matplotlib's Agg canvas — for slides."""
    from PIL import Image

    if not 2 <= max_frames <= 200:
        raise ConfigError(f"max_frames must be between 2 and 200, got {max_frames}.")
    if not 20 <= dpi <= 300:
        raise ConfigError(f"dpi must be between 20 and 300, got {dpi}.")
    if frame_ms < 20:
        raise ConfigError(f"frame_ms must be >= 20, got {frame_ms}.")
    fig, dots, heading = _gif_figure(sc, size, dpi)
    images = []
    for i in frame_steps(len(sc.t), min(max_frames, len(sc.t))):
        dots.set_offsets(sc.coords[i])
        dots.set_array(sc.colour[i])
        heading.set_text(f"{sc.title}\nt = {sc.t[i]:.2f}")
        fig.canvas.draw()
        rgb = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba())
        images.append(rgb.convert("RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT))
    out = BytesIO()
    durations = [frame_ms] * (len(images) - 1) + [1000]
    images[0].save(
        out, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0
    )
    return out.getvalue()
