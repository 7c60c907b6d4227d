"""OT couplings: how Sinkhorn pairs the control and perturbed cells of one minibatch, next to
random pairing — the plan as a heatmap and as lines on the UMAP; ε, batch size and cost live."""

import streamlit as st

from app import links, run_state, state, widgets
from departures_core import couplings, ot
from departures_core.errors import DeparturesError

EPSILONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)
MAP_SEED = 0  # one UMAP per condition, whatever minibatch is drawn on it

row = links.header("OT couplings")
st.caption(
    "Training pairs each perturbed cell with a control cell of its condition by entropic "
    "optimal transport (Sinkhorn) on a minibatch. Here is one minibatch: the plan, the pairs "
    "it favours, and the same minibatch paired at random (the ablation)."
)
run = run_state.trained_run()
if run is None:
    st.stop()
cell_type, pert = widgets.condition_picker(
    run_state.conditions(*run_state.run_key(run)), key="couplings"
)
links.share(row, "couplings")
used = run.config.ot
c_eps, c_batch, c_cost, c_seed = st.columns([3, 3, 2, 1])
eps = c_eps.select_slider(
    "ε (Sinkhorn regularisation)",
    sorted({*EPSILONS, used.epsilon}),
    value=used.epsilon,
    format_func=lambda e: f"{e:g}",
    key="couplings-eps",
    help="Small ε: nearly one partner per cell. Large ε: every pair alike, as in random pairing.",
)
batch = c_batch.select_slider(
    "Batch size", sorted({*BATCHES, used.batch_size}), value=used.batch_size, key="couplings-batch"
)
cost = c_cost.radio(
    "Cost", ot.COSTS, index=ot.COSTS.index(used.cost), horizontal=True, key="couplings-cost"
)
seed = c_seed.number_input("Seed", 0, 2**31 - 1, 0, key="couplings-seed")
st.caption(
    f"This run trained with ε = {used.epsilon:g}, {used.cost} cost, minibatches of "
    f"{used.batch_size} and {used.pairing} pairing. The seed picks the minibatch."
)
try:
    mb = run_state.coupling(
        run, pert, cell_type, epsilon=eps, cost=cost, batch_size=batch, seed=seed
    )
except DeparturesError as exc:
    state.show_error(exc)
    st.stop()

stats = couplings.plan_stats(mb)
s_ot, s_rand = stats.loc["ot"], stats.loc["random"]
m1, m2, m3, m4 = st.columns(4)
m1.metric(
    "Entropy / uniform coupling",
    f"{s_ot.entropy_ratio:.3f}",
    help=f"{s_ot.entropy:.2f} of log(n₀·n₁) = {s_ot.uniform_entropy:.2f} nats. "
    "1 is random pairing; lower means more definite partners.",
)
m2.metric(
    "Mean cost of a pair",
    f"{s_ot.mean_cost:.3f}",
    f"{s_ot.mean_cost - s_rand.mean_cost:+.3f} vs random ({s_rand.mean_cost:.3f})",
    delta_color="inverse",
    help="Cost normalised by its maximum, averaged under the plan.",
)
m3.metric("Marginal error", f"{s_ot.marginal_error:.1e}", help="L1 distance to uniform marginals.")
m4.metric("Sinkhorn iterations", s_ot.n_iter, "converged" if s_ot.converged else "not converged")
if not s_ot.converged:
    st.warning(f"Sinkhorn did not converge at ε = {eps:g}: raise ε.", icon=":material/warning:")

n0, n1 = mb.shape
titles = {"ot": f"OT plan · ε = {eps:g}, {cost}", "random": f"Random pairing · {n1} pairs drawn"}
figs = {}
for col, pairing in zip(st.columns(2), couplings.PAIRINGS, strict=True):
    figs[f"{pairing}-plan"] = fig = couplings.plan_heatmap(
        mb.weights(pairing), mb.row_order, mb.col_order, title=f"{titles[pairing]} · {n0}×{n1}"
    )
    col.plotly_chart(fig, width="stretch", key=f"couplings-{pairing}-plan")
st.caption(
    "Rows: control cells by their first principal component. Columns: perturbed cells by the "
    "mean position of their OT partners; both heatmaps share this order. Colour: weight × n₀·n₁ "
    "(1 = the weight of every pair under random pairing)."
)

try:
    with st.spinner("Fitting the UMAP of this condition (the first map takes up to a minute)…"):
        cmap = run_state.cell_map(run, [pert], cell_type, seed=MAP_SEED)
        xy0, xy1 = run_state.minibatch_coords(
            run, pert, cell_type, batch_size=batch, seed=seed, map_seed=MAP_SEED
        )
except DeparturesError as exc:
    state.show_error(exc)
    st.stop()
for col, pairing in zip(st.columns(2), couplings.PAIRINGS, strict=True):
    figs[f"{pairing}-pairs"] = fig = couplings.pair_lines(
        xy0,
        xy1,
        mb.weights(pairing),
        title=titles[pairing],
        background=cmap.coords,
        perturbed_name=pert,
    )
    col.plotly_chart(fig, width="stretch", key=f"couplings-{pairing}-pairs")

st.subheader("Plan summary")
formats = {"entropy": "%.3f", "uniform_entropy": "%.3f", "entropy_ratio": "%.4f"}
formats |= {"marginal_error": "%.1e", "mean_cost": "%.4f", "epsilon": "%g"}
st.dataframe(
    stats.set_index("pairing"),
    width="stretch",
    column_config={k: st.column_config.NumberColumn(format=f) for k, f in formats.items()},
)
stem = f"couplings-{pert}-{cell_type}-eps{eps:g}-{cost}-b{batch}-s{seed}".replace("+", "_")
with st.expander("Downloads", icon=":material/download:"):
    d1, d2 = st.columns(2)
    d1.download_button(
        "Plan summary (CSV)", stats.to_csv().encode(), f"{stem}-summary.csv", "text/csv"
    )
    names = run.data.cell_names
    d2.download_button(
        "OT pairs, heaviest first (CSV)",
        lambda: (
            couplings.pairs_table(mb, "ot", control_names=names, perturbed_names=names)
            .to_csv(index=False)
            .encode()
        ),
        f"{stem}-pairs.csv",
        "text/csv",
        on_click="ignore",
    )
    for col, (name, fig) in zip(st.columns(len(figs)), figs.items(), strict=True):
        col.download_button(
            f"{name} (HTML)",
            lambda fig=fig: fig.to_html(include_plotlyjs="cdn"),
            f"{stem}-{name}.html",
            "text/html",
            on_click="ignore",
        )
