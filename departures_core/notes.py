"""What the exploration views say in words about the conditions they show."""

from __future__ import annotations

from .data import PerturbationData
from .explore import ConditionCells


def held_out_note(data: PerturbationData, cells: list[ConditionCells]) -> str | None:
    """One sentence on which of the shown conditions were held out: perturbations never
    trained at all, and those trained only in other cell types; None when none was."""
    trained = {}
    for cond in data.train_conditions():
        trained.setdefault(cond.perturbation, set()).add(cond.cell_type)
    held = [c for c in cells if c.held_out]
    never = [c.perturbation for c in held if c.perturbation not in trained]
    elsewhere = [c for c in held if c.perturbation in trained]
    parts = []
    if never:
        parts.append(f"Never trained on (held out): {', '.join(never)}.")
    for c in elsewhere:
        types = sorted(trained[c.perturbation])
        shown = ", ".join(types[:6]) + (f" and {len(types) - 6} more" if len(types) > 6 else "")
        parts.append(f"{c.perturbation} was held out in {c.cell_type}; it was trained in {shown}.")
    return " ".join(parts) or None


def responder_note(cells: ConditionCells) -> str | None:
    """One sentence on the share of this condition's cells predicted not to respond, and where
    that share comes from; None when every cell responds (no ``responders.json``)."""
    if not cells.simulation.responders:
        return None
    row = (cells.perturbation, cells.cell_type, cells.dose)
    w, source = cells.simulation.responders[row]
    shown = cells.simulation.unchanged
    drawn = f" ({int(shown.sum()):,} of {len(shown):,} shown)" if shown is not None else ""
    shifted = (
        f", with the shift all perturbed {cells.cell_type} cells share"
        if cells.cell_type in (cells.simulation.responders_shift or ())
        else ""
    )
    note = (
        f"{cells.perturbation}: {w:.0%} of cells predicted not to respond{drawn} — {source}; "
        f"they stay their control cell{shifted}."
    )
    factor, own = (cells.simulation.spread or {}).get(row, (1.0, False))
    if abs(factor - 1.0) >= 0.005:
        measured = (
            f"in {cells.cell_type}'s training perturbations"
            if own
            else "over the trained cell types (median)"
        )
        note += (
            f" The responding cells' active values are spread ×{factor:.2f} around each"
            f" gene's mean: the observed over the generated spread {measured}."
        )
    carried = (cells.simulation.transferred or {}).get(row)
    if carried is not None:
        note += (
            f" It was never trained in {cells.cell_type}: each gene keeps its predicted change"
            f" in a share of the cells that grows with how consistently the cell types it was"
            f" trained in respond ({carried:.0%} on average); the others keep their control"
            f" value."
        )
    for gene, before, after, scale, in_type, n in (cells.simulation.targets or {}).get(row, ()):
        where = f"in {cells.cell_type}" if in_type else "over the cell types"
        note += (
            f" {gene}, the perturbed gene, is measured but was never trained: it changes as the"
            f" own genes of {n} training perturbations {where} did (median) — expressed in"
            f" {after:.0%} of cells instead of {before:.0%}, its active values ×{scale:.2f}."
        )
    return note
