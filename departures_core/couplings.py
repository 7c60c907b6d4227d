"""The OT couplings view: one minibatch of a condition paired by Sinkhorn and by random pairing,
ordered so the plan's structure shows, drawn as a heatmap and as pair lines on a 2-D map.

Never imports streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import ot
from .errors import ConfigError, DataValidationError
from .explore import find_condition
from .figures import CONTROL_COLOUR, LAYOUT, PALETTE

PAIRINGS = {"ot": "OT (Sinkhorn)", "random": "random pairing"}
PERTURBED_COLOUR = PALETTE[0]
LINE_COLOUR = "rgba(40, 40, 40, 0.35)"
MAX_LINES = 500  # beyond a few hundred lines a map is ink, not information


@dataclass(frozen=True)
class MinibatchCoupling:
    """One minibatch of a condition coupled two ways, and the order to draw it in.

    Attributes
    ----------
    control_rows, perturbed_rows : ndarray, shapes (n0,) and (n1,)
        Rows of the cells in the data matrix (``run.data.x``), or ``arange`` for bare arrays.
    ot : Coupling
        The Sinkhorn plan of the minibatch and the (normalised) cost it minimises.
    random_plan : ndarray, shape (n0, n1)
        The random-pairing ablation as one epoch draws it: ``n1`` pairs from the independent
        coupling, as an empirical plan (each drawn pair weighs ``1 / n1``; sums to 1).
    row_order, col_order : ndarray, shapes (n0,) and (n1,)
        Display order of the control (rows) and perturbed (columns) cells; see `display_order`.
    """

    control_rows: np.ndarray
    perturbed_rows: np.ndarray
    ot: ot.Coupling
    random_plan: np.ndarray
    row_order: np.ndarray
    col_order: np.ndarray
    seed: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.ot.plan.shape

    def weights(self, pairing: str) -> np.ndarray:
        """The plan drawn for ``pairing`` ("ot" or "random"), shape (n0, n1)."""
        if pairing not in PAIRINGS:
            raise ConfigError(f"pairing must be one of {tuple(PAIRINGS)}, got {pairing!r}.")
        return self.ot.plan if pairing == "ot" else self.random_plan


# ------------------------------------------------------------------ the coupling
def minibatch_rows(
    control: np.ndarray, perturbed: np.ndarray, *, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded minibatch of one condition as training draws it: at most ``batch_size`` control
    and ``batch_size`` perturbed rows without replacement (all of them when fewer), sorted."""
    if int(batch_size) < 2:
        raise ConfigError(f"The batch size must be >= 2, got {batch_size}.")
    rng = np.random.default_rng(seed)

    def pick(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if len(rows) <= batch_size:
            return rows
        return np.sort(rng.choice(rows, batch_size, replace=False))

    return pick(control), pick(perturbed)


def couple(
    x0: np.ndarray,
    x1: np.ndarray,
    *,
    epsilon: float,
    cost: str = "euclidean",
    seed: int = 0,
    control_rows: np.ndarray | None = None,
    perturbed_rows: np.ndarray | None = None,
) -> MinibatchCoupling:
    """Couple control cells ``x0`` (n0, n_genes) with perturbed cells ``x1`` (n1, n_genes) by
    Sinkhorn and by random pairing (seeded by ``seed``).

    Raises `ConfigError` for a bad ε or cost, or an ε so small that Sinkhorn underflows, and
    `DataValidationError` for empty or non-finite cells.
    """
    if not np.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"ε must be a positive number, got {epsilon}.")
    if cost not in ot.COSTS:
        raise ConfigError(f"The cost must be one of {', '.join(ot.COSTS)}; got {cost!r}.")
    x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
    if x0.ndim != 2 or x1.ndim != 2 or x0.shape[1] != x1.shape[1]:
        raise DataValidationError(
            "Control and perturbed cells need the same genes, got shapes "
            f"{x0.shape} and {x1.shape}."
        )
    if min(len(x0), len(x1)) < 2:
        raise DataValidationError(
            f"Coupling needs at least 2 control and 2 perturbed cells, got {len(x0)} and {len(x1)}."
        )
    if not (np.isfinite(x0).all() and np.isfinite(x1).all()):
        raise DataValidationError("The expression of these cells contains NaN or infinite values.")
    plan = ot.solve(x0, x1, epsilon=epsilon, cost=cost)
    if not np.isfinite(plan.plan).all() or abs(plan.plan.sum() - 1.0) > 1e-3:
        raise ConfigError(
            f"ε = {epsilon:g} is too small for these cells: Sinkhorn underflowed. Use a larger ε."
        )
    n0, n1 = plan.plan.shape
    i, j = ot.random_pairs(n0, n1, n1, np.random.default_rng(seed))
    random_plan = np.zeros((n0, n1))
    np.add.at(random_plan, (i, j), 1.0 / n1)
    rows, cols = display_order(x0, x1, plan.plan)
    return MinibatchCoupling(
        control_rows=np.arange(n0) if control_rows is None else np.asarray(control_rows),
        perturbed_rows=np.arange(n1) if perturbed_rows is None else np.asarray(perturbed_rows),
        ot=plan,
        random_plan=random_plan,
        row_order=rows,
        col_order=cols,
        seed=seed,
    )


def condition_coupling(
    run,
    perturbation: str,
    cell_type: str,
    *,
    epsilon: float,
    cost: str = "euclidean",
    batch_size: int = 512,
    seed: int = 0,
) -> MinibatchCoupling:
    """`couple` a seeded minibatch (`minibatch_rows`) of one condition of ``run``."""
    cond = find_condition(run, perturbation, cell_type)
    r0, r1 = minibatch_rows(cond.control, cond.perturbed, batch_size=batch_size, seed=seed)
    x = run.data.x
    return couple(
        x[r0], x[r1], epsilon=epsilon, cost=cost, seed=seed, control_rows=r0, perturbed_rows=r1
    )


def display_order(
    x0: np.ndarray, x1: np.ndarray, plan: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Orders of the rows (control cells) and columns (perturbed cells) that show a plan's
    structure.

    Rows follow the control cells' scores on the first principal component of the control
    cells: a 1-D summary of where each sits in expression space. Columns follow each perturbed
    cell's barycentric projection onto that order, ``sum_i pi_ij rank(i) / sum_i pi_ij``: the
    mean position of the control cells the plan sends it to (ties broken by the cell's own
    score on the same component). A plan that pairs like with like then lies along the
    diagonal; a diffuse one (large ε) looks flat. The order comes from the OT plan alone, so
    the random pairing drawn in the same order is comparable cell for cell.

    Returns
    -------
    row_order : ndarray, shape (n0,)
    col_order : ndarray, shape (n1,)
    """
    centre = x0.mean(0)
    _, _, vt = np.linalg.svd(x0 - centre, full_matrices=False)
    axis = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])  # a fixed sign: reproducible
    row_order = np.argsort((x0 - centre) @ axis, kind="stable")
    rank = np.empty(len(x0))
    rank[row_order] = np.arange(len(x0))
    mass = plan.sum(0)
    bary = (rank @ plan) / np.where(mass > 0, mass, 1.0)
    col_order = np.lexsort(((x1 - centre) @ axis, bary))
    return row_order, col_order


# ------------------------------------------------------------------ tables
def plan_stats(mb: MinibatchCoupling) -> pd.DataFrame:
    """One row per pairing ("ot", "random"): the plan's entropy against the independent
    (uniform) coupling's ``log(n0 n1)``, its marginal error, convergence, and the mean cost of
    a pair under it.

    Random pairing draws from the independent coupling, so its row describes that coupling:
    entropy ``log(n0 n1)`` (ratio 1), no marginal error, mean cost = the mean of the cost.
    """
    n0, n1 = mb.shape
    uniform = float(np.log(n0 * n1))
    c = mb.ot
    rows = {
        "ot": (c.entropy, c.marginal_error, c.converged, c.n_iter, float((c.plan * c.cost).sum())),
        "random": (uniform, 0.0, True, 0, float(c.cost.mean())),
    }
    table = pd.DataFrame(
        [
            {
                "pairing": PAIRINGS[name],
                "epsilon": c.epsilon if name == "ot" else np.nan,
                "cost": c.cost_kind,
                "n_control": n0,
                "n_perturbed": n1,
                "entropy": h,
                "uniform_entropy": uniform,
                "entropy_ratio": h / uniform if uniform > 0 else 1.0,
                "marginal_error": err,
                "converged": conv,
                "n_iter": it,
                "mean_cost": mean_cost,
            }
            for name, (h, err, conv, it, mean_cost) in rows.items()
        ],
        index=pd.Index(list(rows), name="key"),
    )
    return table


def heaviest_pairs(weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` heaviest positive entries of ``weights`` (n0, n1): ``(i, j, weight)``, heaviest
    first (ties in row-major order)."""
    flat = np.asarray(weights, dtype=float).ravel()
    order = np.argsort(-flat, kind="stable")[: max(0, int(n))]
    order = order[flat[order] > 0]
    i, j = np.divmod(order, weights.shape[1])
    return i, j, flat[order]


def pairs_table(
    mb: MinibatchCoupling,
    pairing: str,
    *,
    control_names=None,
    perturbed_names=None,
    top: int | None = None,
) -> pd.DataFrame:
    """The pairs of ``pairing`` with positive weight, heaviest first: columns control,
    perturbed (cell names, or data rows without names), weight, cost."""
    weights = mb.weights(pairing)
    i, j, w = heaviest_pairs(weights, weights.size if top is None else top)
    r0, r1 = mb.control_rows[i], mb.perturbed_rows[j]
    return pd.DataFrame(
        {
            "control": r0 if control_names is None else np.asarray(control_names)[r0],
            "perturbed": r1 if perturbed_names is None else np.asarray(perturbed_names)[r1],
            "weight": w,
            "cost": mb.ot.cost[i, j],
        }
    )


# ------------------------------------------------------------------ figures
def plan_heatmap(
    weights: np.ndarray,
    row_order: np.ndarray,
    col_order: np.ndarray,
    *,
    title: str,
    zmax: float | None = None,
) -> go.Figure:
    """A coupling as a heatmap, rows (control cells) and columns (perturbed cells) reordered.

    The colour is ``pi_ij * n0 * n1``: 1 is the weight of every pair under the independent
    (random) coupling, so plans of different sizes and pairings share one scale. By default
    the scale ends at the 95th percentile of the perturbed cells' heaviest weights, so that a
    few outlying cells do not wash out the rest (heavier entries show in the darkest colour).

    weights : ndarray, shape (n0, n1)
        A plan (non-negative, sums to 1).
    row_order, col_order : ndarray, shapes (n0,) and (n1,)
        Permutations, e.g. from `display_order`.
    """
    weights = _check_plan(weights)
    n0, n1 = weights.shape
    for order, n, side in ((row_order, n0, "row"), (col_order, n1, "column")):
        if sorted(np.asarray(order).tolist()) != list(range(n)):
            raise ConfigError(f"The {side} order must be a permutation of 0..{n - 1}.")
    z = (weights[np.ix_(row_order, col_order)] * n0 * n1).astype(np.float32)
    if zmax is None:
        zmax = float(np.quantile(z.max(0), 0.95)) or float(z.max())
    fig = go.Figure(
        go.Heatmap(
            z=z,
            zmin=0.0,
            zmax=float(zmax),
            colorscale="Blues",
            colorbar={"title": {"text": "π·n₀·n₁"}},
            hovertemplate="control %{y} · perturbed %{x}<br>π·n₀·n₁ = %{z:.2f}<extra></extra>",
        )
    )
    fig.update_layout(title=title, height=460, **LAYOUT)
    fig.update_xaxes(title="perturbed cells (by barycentre of their partners)", showgrid=False)
    fig.update_yaxes(
        title="control cells (by PC 1)", autorange="reversed", showgrid=False, zeroline=False
    )
    return fig


def pair_lines(
    coords0: np.ndarray,
    coords1: np.ndarray,
    weights: np.ndarray,
    *,
    title: str,
    max_lines: int | None = None,
    background: np.ndarray | None = None,
    perturbed_name: str = "perturbed",
) -> go.Figure:
    """Pairs of a coupling as lines from control to perturbed cells on a 2-D map.

    The heaviest ``max_lines`` pairs are drawn (default: one per cell of the larger side, at
    most `MAX_LINES`), heaviest first; the title says what share of the plan's mass they hold.

    coords0 : ndarray, shape (n0, 2)
        Map positions of the control cells.
    coords1 : ndarray, shape (n1, 2)
        Map positions of the perturbed cells.
    weights : ndarray, shape (n0, n1)
        The plan.
    background : ndarray, shape (n, 2), optional
        Other cells of the map, drawn faintly underneath for context.
    """
    weights = _check_plan(weights)
    n0, n1 = weights.shape
    coords0, coords1 = np.asarray(coords0, float), np.asarray(coords1, float)
    if coords0.shape != (n0, 2) or coords1.shape != (n1, 2):
        raise ConfigError(
            f"Coordinates of shapes {coords0.shape} and {coords1.shape} do not match a "
            f"{n0}×{n1} plan: expected ({n0}, 2) and ({n1}, 2)."
        )
    if max_lines is None:
        max_lines = min(MAX_LINES, max(n0, n1))
    if max_lines < 1:
        raise ConfigError(f"max_lines must be >= 1, got {max_lines}.")
    i, j, w = heaviest_pairs(weights, max_lines)
    n_pairs = int((weights > 0).sum())
    nan = np.full(len(i), np.nan)
    xs = np.column_stack([coords0[i, 0], coords1[j, 0], nan]).ravel()
    ys = np.column_stack([coords0[i, 1], coords1[j, 1], nan]).ravel()
    share = w.sum() / weights.sum()
    fig = go.Figure()
    if background is not None and len(background):
        fig.add_scattergl(
            x=background[:, 0],
            y=background[:, 1],
            mode="markers",
            name="other cells",
            marker={"size": 3, "color": "#e0e0e0"},
            hoverinfo="skip",
        )
    fig.add_scatter(
        x=xs,
        y=ys,
        mode="lines",
        name=f"pairs ({len(i):,} heaviest)",
        line={"color": LINE_COLOUR, "width": 1},
        customdata=np.repeat(w * n0 * n1, 3),
        hovertemplate="π·n₀·n₁ = %{customdata:.2f}<extra></extra>",
    )
    for name, coords, colour in (
        (f"control ({n0})", coords0, CONTROL_COLOUR),
        (f"{perturbed_name} ({n1})", coords1, PERTURBED_COLOUR),
    ):
        fig.add_scatter(
            x=coords[:, 0],
            y=coords[:, 1],
            mode="markers",
            name=name,
            marker={"size": 6, "color": colour, "line": {"width": 0.5, "color": "white"}},
            hovertemplate=f"{name}<extra></extra>",
        )
    fig.update_layout(
        title=f"{title}<br><sup>{len(i):,} of {n_pairs:,} pairs, heaviest first · "
        f"{share:.0%} of the plan's mass</sup>",
        height=500,
        legend={"itemsizing": "constant", "orientation": "h", "yanchor": "top", "y": -0.1},
        **LAYOUT,
    )
    fig.update_xaxes(title="UMAP 1", showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(title="UMAP 2", showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _check_plan(weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 2 or 0 in weights.shape:
        raise ConfigError(f"A plan is a non-empty 2-D matrix, got shape {weights.shape}.")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError("A plan's weights must be finite, non-negative and not all zero.")
    return weights
