"""Departures: single-cell perturbation prediction with neural Schrödinger bridges."""

__version__ = "0.1.0"

from .config import BridgeConfig, DataConfig, ModelConfig, OTConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import DeparturesError  # noqa: E402

__all__ = [
    "BridgeConfig",
    "DataConfig",
    "DeparturesError",
    "ModelConfig",
    "OTConfig",
    "RunConfig",
    "TrainConfig",
    "__version__",
]
