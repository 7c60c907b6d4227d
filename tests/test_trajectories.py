"""Trajectory frames, the plotly animation and its HTML / GIF exports."""

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from departures_core import explore, trajectories
from departures_core.errors import ConfigError, DeparturesError

N_CELLS, STEPS = 24, 10


@pytest.fixture(scope="module")
def cells(run):
    row = explore.conditions_table(run).iloc[0]
    return explore.condition_cells(
        run, row.perturbation, row.cell_type, n_cells=N_CELLS, steps=STEPS, trajectory=True
    )


def _place(x: np.ndarray) -> np.ndarray:
    """A cheap stand-in for the UMAP: a fixed projection of the genes onto 2-D."""
    w = np.random.default_rng(0).normal(size=(x.shape[1], 2))
    return x @ w


@pytest.fixture(scope="module")
def frames(cells):
    steps = trajectories.frame_steps(len(cells.simulation.t), 6)
    return steps, trajectories.place_frames(cells.simulation, _place, steps)


def _scene(cells, frames, mode="time", gene=None, **kw):
    steps, coords = frames
    rng = np.random.default_rng(1)
    target = kw.pop("target", rng.normal(size=(15, 2)) + 30.0)  # outside the moving cloud
    start = kw.pop("start", rng.normal(size=(12, 2)) - 30.0)
    return trajectories.scene(
        cells, coords, steps, mode=mode, gene=gene, target=target, start=start, **kw
    )


def _values(a) -> np.ndarray:
    return np.asarray(a, dtype=float)


def test_frame_steps_are_evenly_spaced_and_keep_both_ends():
    steps = trajectories.frame_steps(51)
    assert len(steps) == 26 and steps[0] == 0 and steps[-1] == 50
    assert set(np.diff(steps)) == {2}
    assert trajectories.frame_steps(5, 26).tolist() == [0, 1, 2, 3, 4]  # never more than exist
    with pytest.raises(ConfigError):
        trajectories.frame_steps(1)
    with pytest.raises(ConfigError):
        trajectories.frame_steps(51, 1)


def test_expression_starts_at_the_control_cells_and_ends_at_the_prediction(run, cells):
    sim = cells.simulation
    np.testing.assert_allclose(
        trajectories.expression_at(sim, 0), run.data.x[cells.control_rows], atol=1e-6
    )
    np.testing.assert_allclose(trajectories.expression_at(sim, STEPS), sim.prediction, atol=1e-6)


def test_place_frames_places_every_cell_of_every_frame(cells, frames):
    steps, coords = frames
    calls = []
    again = trajectories.place_frames(
        cells.simulation, _place, steps, progress=lambda i, n: calls.append((i, n))
    )
    assert coords.shape == (len(steps), N_CELLS, 2) and np.isfinite(coords).all()
    assert calls == [(i + 1, len(steps)) for i in range(len(steps))]
    np.testing.assert_array_equal(again, coords)
    expected = _place(trajectories.expression_at(cells.simulation, int(steps[2])))
    np.testing.assert_allclose(coords[2], expected, rtol=1e-5, atol=1e-4)


def test_animation_has_a_frame_per_time_point_with_every_cell(cells, frames):
    sc = _scene(cells, frames)
    fig = trajectories.animation(sc)
    assert len(fig.frames) == len(frames[0])
    moving = len(fig.data) - 1  # still clouds first, the moving cells last
    for i, frame in enumerate(fig.frames):
        assert list(frame.traces) == [moving]
        x, y = _values(frame.data[0].x), _values(frame.data[0].y)
        assert len(x) == len(y) == N_CELLS
        assert np.isfinite(x).all() and np.isfinite(y).all()
        np.testing.assert_allclose(x, frames[1][i, :, 0], rtol=1e-6)
    slider = fig.layout.sliders[0]
    assert len(slider.steps) == len(fig.frames)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ Play", "❚❚ Pause"]
    assert [t.type for t in fig.data] == ["scatter"] * 3  # SVG: measured faster


def test_axis_ranges_are_fixed_and_cover_every_point(cells, frames):
    sc = _scene(cells, frames)
    fig = trajectories.animation(sc)
    xr, yr = fig.layout.xaxis.range, fig.layout.yaxis.range
    assert fig.layout.xaxis.autorange is False and fig.layout.yaxis.autorange is False
    pts = np.concatenate([frames[1].reshape(-1, 2), sc.target, sc.start])
    assert xr[0] < pts[:, 0].min() and pts[:, 0].max() < xr[1]
    assert yr[0] < pts[:, 1].min() and pts[:, 1].max() < yr[1]


def test_time_colour_is_constant_per_frame_and_rises(cells, frames):
    fig = trajectories.animation(_scene(cells, frames, "time"))
    per_frame = [_values(f.data[0].marker.color) for f in fig.frames]
    assert all(np.ptp(c) == 0 for c in per_frame)
    t = np.array([c[0] for c in per_frame])
    np.testing.assert_allclose(t, cells.simulation.t[frames[0]], rtol=1e-6)
    assert t[0] == 0 and t[-1] == 1 and (np.diff(t) > 0).all()


def test_on_off_colour_is_the_gene_state(cells, frames):
    gene = cells.genes[int(np.argmax(cells.simulation.d_path.mean((0, 1))))]  # often on
    fig = trajectories.animation(_scene(cells, frames, "on/off", gene))
    g = cells.gene_index(gene)
    for i, f in enumerate(fig.frames):
        c = _values(f.data[0].marker.color)
        assert set(np.unique(c)) <= {0.0, 1.0}
        np.testing.assert_array_equal(c, cells.simulation.d_path[frames[0][i], :, g])
    assert fig.data[-1].marker.cmin == 0 and fig.data[-1].marker.cmax == 1


def test_expression_colour_is_the_gene_at_each_time(cells, frames):
    gene = cells.genes[3]
    sc = _scene(cells, frames, "expression", gene)
    fig = trajectories.animation(sc)
    for i, f in enumerate(fig.frames):
        want = trajectories.expression_at(cells.simulation, frames[0][i])[:, 3]
        np.testing.assert_allclose(_values(f.data[0].marker.color), want, rtol=1e-6)
    assert fig.data[-1].marker.cmax >= sc.colour.max()


def test_presentation_enlarges_the_figure(cells, frames):
    sc = _scene(cells, frames)
    normal, big = trajectories.animation(sc), trajectories.animation(sc, presentation=True)
    assert big.layout.height > normal.layout.height
    assert big.layout.font.size > normal.layout.font.size
    assert big.data[-1].marker.size > normal.data[-1].marker.size


def test_webgl_frames_are_redrawn(cells, frames):
    fig = trajectories.animation(_scene(cells, frames), webgl=True)
    assert fig.data[-1].type == "scattergl" and fig.frames[0].data[0].type == "scattergl"
    play = fig.layout.updatemenus[0].buttons[0].args[1]
    assert play["frame"]["redraw"] is True
    svg = trajectories.animation(_scene(cells, frames)).layout.updatemenus[0].buttons[0]
    assert svg.args[1]["frame"]["redraw"] is False


def test_many_cells_switch_to_webgl():
    n = trajectories.SVG_MAX_CELLS + 1
    t = np.array([0.0, 1.0])
    sc = trajectories.Scene(t, np.zeros((2, n, 2)), np.zeros((2, n)), "time", "t")
    assert trajectories.animation(sc).data[-1].type == "scattergl"


def test_html_export_is_a_complete_page_with_plotly_inside(cells, frames):
    html = trajectories.to_html(trajectories.animation(_scene(cells, frames))).decode()
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "plotly.js" in html.lower() and "<script src=" not in html  # nothing fetched
    assert "Plotly.newPlot" in html and "addFrames" in html


def test_gif_export_is_an_animation(cells, frames):
    gif = trajectories.to_gif(_scene(cells, frames, "on/off", cells.genes[0]), dpi=40)
    assert gif[:6] == b"GIF89a"
    assert Image.open(BytesIO(gif)).n_frames == len(frames[0])
    few = trajectories.to_gif(_scene(cells, frames), dpi=40, max_frames=3)
    assert Image.open(BytesIO(few)).n_frames == 3


def test_bad_arguments_raise_typed_errors(run, cells, frames):
    steps, coords = frames
    with pytest.raises(ConfigError, match="Colour mode"):
        _scene(cells, frames, "rainbow")
    with pytest.raises(ConfigError, match="needs a gene"):
        _scene(cells, frames, "expression")
    with pytest.raises(DeparturesError, match="not among"):
        _scene(cells, frames, "on/off", "NOT-A-GENE")
    with pytest.raises(ConfigError, match="Shapes"):
        trajectories.scene(cells, coords[:-1], steps)
    bad = coords.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        trajectories.scene(cells, bad, steps)
    n = trajectories.MAX_CELLS + 1
    with pytest.raises(ConfigError, match="too many"):
        trajectories.Scene(np.array([0, 1.0]), np.zeros((2, n, 2)), np.zeros((2, n)), "time", "t")
    sc = _scene(cells, frames)
    with pytest.raises(ConfigError):
        trajectories.animation(sc, frame_ms=0)
    with pytest.raises(ConfigError):
        trajectories.to_gif(sc, dpi=5)
    with pytest.raises(ConfigError):
        trajectories.to_gif(sc, max_frames=1)
    endpoints = explore.condition_cells(run, cells.perturbation, cells.cell_type, n_cells=4)
    with pytest.raises(ConfigError, match="trajectory=True"):
        trajectories.expression_at(endpoints.simulation, 0)
