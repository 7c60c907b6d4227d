"""One frozen configuration object per run, saved with every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """Which obs columns mean what, the gene set, and the train/hold-out split."""

    perturbation_key: str = "condition"
    control: str = "control"
    cell_type_key: str | None = None
    dose_key: str | None = None
    n_genes: int = 2000
    min_cells: int = 3
    drop_rare: bool = False
    holdout: tuple[str, ...] = ()
    holdout_fraction: float = 0.25
    holdout_cell_types: tuple[str, ...] = ()
    # share of the training perturbations (of the training cell types, when cell types are
    # held out) kept out of the network's training; what the model uses for a perturbation
    # it never saw (the non-responders' fraction, the spread) is fitted on them. None with
    # fewer than 4 (`data.MIN_VALIDATION_UNITS`). ``validation`` names them instead.
    validation_fraction: float = 0.2
    validation: tuple[str, ...] = ()


@dataclass(frozen=True)
class OTConfig:
    """Entropic OT pairing of control and perturbed cells within a condition."""

    pairing: str = "ot"  # "ot" or "random" (the ablation)
    epsilon: float = 0.1
    cost: str = "euclidean"  # or "cosine"
    scale: str = "max"  # the cost is divided by its "max" or its "mean" (epsilon is relative)
    space: str = "genes"  # cost on the "genes" or on "pca" coordinates of the cells
    n_pcs: int = 50
    batch_size: int = 512  # minibatch OT size; bounds memory at batch_size**2
    max_iter: int = 1000
    stop_thr: float = 1e-6


ONOFF_SAMPLERS = ("endpoint", "sequential")


@dataclass(frozen=True)
class BridgeConfig:
    """The two bridges: Brownian bridge (SDE) and on/off CTMC."""

    # the Brownian bridge's noise. The authors' 0.2 left the generated values of a gene
    # 15-30 % narrower than the observed ones where it is active (the endpoint network has to
    # spread cells out from little noise and regresses to the mean); 0.5 lowered the held-out
    # e_distance on all three benchmark datasets (README, Calibration)
    sigma: float = 0.5
    t_min: float = 1e-3
    steps: int = 50
    discrete: bool = True  # False: continuous bridge only (the ablation)
    disc_weight: float = 1.0  # lambda in L = L_cont + lambda * L_disc
    # how sampling draws the on/off endpoint d1: "endpoint" - every gene at once from
    # p(d1 | control cell), then uniform switch times; "sequential" - each gene at its switch
    # time given the genes switched before it (see `sample.simulate`)
    onoff: str = "endpoint"
    # a perturbation predicted for a cell type it was not trained in keeps, gene by gene,
    # only the changes that carry over between cell types (`transfer.fit`);
    # False: every predicted change is kept
    transfer: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """Network widths and the conditioning encoder."""

    hidden: int = 512
    n_layers: int = 2
    cond_dim: int = 128
    grn_threshold: float = 0.3
    grn_max_cells: int = 5000
    token_dropout: float = 0.1  # trains the "unknown perturbation" fallback
    # share of training rows whose cell-type conditioning (embedding and controls' mean
    # profile) is dropped; trains the "unseen cell type" fallback, which a cell type with
    # no training condition takes: the control cell alone says where it starts
    ct_dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    # None: as many epochs as `steps` optimiser steps take (at least one). A fixed number of
    # epochs gave 220 steps on Kang and 1,260 on the demo, too few to fit each condition:
    # 60 epochs of the demo (4,260 steps) took the median held-out e_distance from 0.44 to 0.32.
    epochs: int | None = None
    steps: int = 4000
    # share of each training condition's perturbed cells kept out of training, to fit the
    # fraction of non-responders on cells the bridges never saw
    validation: float = 0.2
    # pairs per optimiser step and process; None: 64 on CPU, 256 on a GPU (with the learning
    # rate scaled by the square root of the batch ratio), see `resolved_batch`
    batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # decay of an exponential moving average of the weights, which the trained model keeps
    # (0: the last weights)
    ema: float = 0.0
    device: str = "auto"
    # torch threads per training process; 0: the cores shared among the node's processes
    # (at most half of them for a lone process), `distributed.threads_for`
    threads: int = 0


CPU_BATCH, GPU_BATCH = 64, 256


def resolved_batch(train: TrainConfig, device_type: str) -> tuple[int, float]:
    """``(batch size, learning rate)`` of a training on ``device_type``: as configured, or
    (batch size None) 64 on CPU and 256 on a GPU, whose rate grows by sqrt(256 / 64) = 2."""
    if train.batch_size is not None:
        return int(train.batch_size), float(train.lr)
    if device_type == "cuda":
        return GPU_BATCH, float(train.lr) * (GPU_BATCH / CPU_BATCH) ** 0.5
    return CPU_BATCH, float(train.lr)


MAX_AUTO_EPOCHS = 500  # a tiny dataset (one step an epoch) is not re-paired 4,000 times


def resolved_epochs(train: TrainConfig, steps_per_epoch: int) -> int:
    """The epochs a training runs: ``train.epochs``, or enough for ``train.steps`` steps
    (at most `MAX_AUTO_EPOCHS`)."""
    if train.epochs is not None:
        return int(train.epochs)
    wanted = -(-int(train.steps) // max(1, int(steps_per_epoch)))
    return max(1, min(MAX_AUTO_EPOCHS, wanted))


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        parts = {
            "data": DataConfig,
            "ot": OTConfig,
            "bridge": BridgeConfig,
            "model": ModelConfig,
            "train": TrainConfig,
        }
        kwargs: dict[str, Any] = {}
        for name, kind in parts.items():
            known = {f.name for f in dataclasses.fields(kind)}
            values = {k: v for k, v in d.get(name, {}).items() if k in known}
            if name == "data" and name in d and "validation_fraction" not in d[name]:
                values["validation_fraction"] = 0.0  # saved before validation existed
            for k, v in values.items():
                if isinstance(v, list):
                    values[k] = tuple(v)
            kwargs[name] = kind(**values)
        return cls(**kwargs, seed=int(d.get("seed", 0)))

    def check(self) -> RunConfig:
        """Raise `ConfigError` naming the first out-of-range setting; return self."""
        from .errors import ConfigError

        rules = [
            (
                self.train.epochs is None or self.train.epochs >= 1,
                f"epochs must be >= 1, got {self.train.epochs}",
            ),
            (self.train.steps >= 1, f"steps must be >= 1, got {self.train.steps}"),
            (
                0 <= self.train.ema < 1,
                f"ema (the weights' moving-average decay) must be in [0, 1), got {self.train.ema}",
            ),
            (
                0 <= self.train.validation < 1,
                f"validation share must be in [0, 1), got {self.train.validation}",
            ),
            (
                self.train.batch_size is None or self.train.batch_size >= 1,
                f"batch size must be >= 1, got {self.train.batch_size}",
            ),
            (self.train.threads >= 0, f"threads must be >= 0, got {self.train.threads}"),
            (self.train.lr > 0, f"learning rate must be > 0, got {self.train.lr}"),
            (self.ot.epsilon > 0, f"epsilon must be > 0, got {self.ot.epsilon}"),
            (self.ot.batch_size >= 2, f"OT batch size must be >= 2, got {self.ot.batch_size}"),
            (self.ot.cost in ("euclidean", "cosine"), f"unknown OT cost '{self.ot.cost}'"),
            (self.ot.pairing in ("ot", "random"), f"unknown pairing '{self.ot.pairing}'"),
            (self.ot.scale in ("max", "mean"), f"unknown OT cost scale '{self.ot.scale}'"),
            (self.ot.space in ("genes", "pca"), f"unknown OT space '{self.ot.space}'"),
            (self.ot.n_pcs >= 1, f"n_pcs must be >= 1, got {self.ot.n_pcs}"),
            (self.bridge.sigma > 0, f"sigma must be > 0, got {self.bridge.sigma}"),
            (self.bridge.steps >= 1, f"steps must be >= 1, got {self.bridge.steps}"),
            (
                self.bridge.onoff in ONOFF_SAMPLERS,
                f"onoff must be one of {', '.join(ONOFF_SAMPLERS)}, got {self.bridge.onoff!r}",
            ),
            (self.data.n_genes >= 1, f"n_genes must be >= 1, got {self.data.n_genes}"),
            (
                0 <= self.data.holdout_fraction < 1,
                f"hold-out fraction must be in [0, 1), got {self.data.holdout_fraction}",
            ),
            (
                0 <= self.data.validation_fraction < 1,
                f"validation fraction must be in [0, 1), got {self.data.validation_fraction}",
            ),
            (self.model.hidden >= 1 and self.model.cond_dim >= 2, "network sizes must be >= 2"),
            (
                0 <= self.model.ct_dropout < 1,
                f"ct_dropout must be in [0, 1), got {self.model.ct_dropout}",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(f"Invalid setting: {message}.")
        return self

    def replace(self, **sections: Any) -> RunConfig:
        """Return a copy with sections replaced, e.g. ``cfg.replace(train=...)``."""
        return dataclasses.replace(self, **sections)
