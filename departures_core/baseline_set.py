"""The simple baselines an evaluation scores beside the model, on the same cells, with the
settings of `linear` and `nearest` chosen on the validation conditions (DESIGN §3)."""

from __future__ import annotations

import numpy as np

from . import metrics
from .baselines import Predictor
from .data import Condition, PerturbationData

TEST = "test"  # the split whose baselines also learn from the validation conditions


def mean_shift_predictor(data: PerturbationData) -> Predictor:
    """Control + the perturbation's own mean shift if it was seen in training (in another
    cell type), else the mean shift over training conditions of the same cell type (all
    training conditions when that cell type has none)."""
    shifts = {
        (c.perturbation, c.cell_type): data.x.mean(c.perturbed) - data.x.mean(c.control)
        for c in data.train_conditions()
    }

    def predict(cond: Condition) -> np.ndarray:
        own = [s for (p, _), s in shifts.items() if p == cond.perturbation]
        same_ct = [s for (_, ct), s in shifts.items() if ct == cond.cell_type]
        pool = own or same_ct or list(shifts.values())
        return data.x[cond.control] + np.mean(pool, axis=0)

    return predict


def pooled_perturbed_predictor(data: PerturbationData, max_cells: int = 2000) -> Predictor:
    """All perturbed cells of the training conditions of the same cell type, pooled (all
    training conditions when that cell type has none); at most ``max_cells`` of them, drawn
    once with a fixed seed. It is what "a perturbed cell of this cell type" looks like."""
    rng = np.random.default_rng(0)
    train = data.train_conditions()
    everyone = np.concatenate([c.perturbed for c in train])

    def predict(cond: Condition) -> np.ndarray:
        same_ct = [c.perturbed for c in train if c.cell_type == cond.cell_type]
        pool = np.concatenate(same_ct) if same_ct else everyone
        if len(pool) > max_cells:
            pool = np.sort(rng.choice(pool, max_cells, replace=False))
        return data.x[pool]

    return predict


def knowledge_of(data: PerturbationData, source=None):
    """The knowledge baselines read, as two functions over the data's perturbation labels:
    ``features(perturbations)`` (GO-term indicators over the terms two or more of the data's
    perturbations share: one fixed set of columns) and ``similarity(p, others)`` (Jaccard
    of GO terms); and the `knowledge.Knowledge` itself. ``source``: a user's gene graph or
    embedding table (CSV, `knowledge.from_csv`) instead of the shipped GO table."""
    from . import knowledge

    labels = sorted({c.perturbation for c in data.conditions})
    if source is not None:
        know = knowledge.from_csv(source)
    else:
        know = knowledge.for_genes(data.genes, labels)
    table = know.features(labels)
    row = {p: i for i, p in enumerate(labels)}

    def features(perturbations: list[str]) -> np.ndarray:
        return table[[row[p] for p in perturbations]]

    def similarity(perturbation: str, others) -> np.ndarray:
        return know.similarity([perturbation], list(others))[0]

    return features, similarity, know


def baseline_predictors(
    data: PerturbationData,
    split: str = TEST,
    *,
    seed: int = 0,
    knowledge=None,
    settings: dict | None = None,
) -> tuple[dict[str, Predictor], dict]:
    """The simple baselines and their settings: ``control``, ``mean_shift``,
    ``pooled_perturbed``, ``additive``, ``linear`` and ``nearest`` (`baselines`).

    The settings of ``linear`` and ``nearest`` are chosen on the validation conditions,
    predicted from the training ones (`baselines.tune`, by median e_distance); for the test
    split the baselines then learn from the validation conditions too, as the model's
    post-hoc fits do. ``knowledge``: a user's CSV (`knowledge_of`). The settings also say
    which knowledge was read and which perturbed genes it does not know;
    ``settings`` (an earlier call's, on the same data) are reused instead of tuned again."""
    from . import baselines

    features, similarity, know = knowledge_of(data, knowledge)

    def e_distance(pred, obs, ctrl):
        return metrics.e_distance(pred, obs)

    settings = settings or {
        "linear": baselines.tune(
            data,
            "linear",
            lambda **kw: baselines.linear_predictor(data, features, **kw),
            metric=e_distance,
        )[0],
        "nearest": baselines.tune(
            data,
            "nearest",
            lambda **kw: baselines.nearest_predictor(data, similarity, seed=seed, **kw),
            metric=e_distance,
        )[0],
        "knowledge": {
            "source": know.source,
            "unknown": know.unknown(sorted({c.perturbation for c in data.conditions})),
        },
    }
    learn = data.with_validation_trained() if split == TEST else data
    predictors: dict[str, Predictor] = {
        "control": lambda cond: learn.x[cond.control],
        "mean_shift": mean_shift_predictor(learn),
        "pooled_perturbed": pooled_perturbed_predictor(learn),
        "additive": baselines.additive_predictor(learn),
        "linear": baselines.linear_predictor(learn, features, **settings["linear"]),
        "nearest": baselines.nearest_predictor(learn, similarity, seed=seed, **settings["nearest"]),
    }
    return predictors, settings
