"""Departures: single-cell perturbation prediction with neural Schrödinger bridges.

The Python API, scanpy style::

    import departures_core as dc

    model = dc.fit(adata, perturbation_key="condition", control="control")
    pred = model.predict("KLF1", n_cells=200)  # AnnData in the input's obs keys
    model.save("runs/klf1")
    model = dc.load("runs/klf1")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .config import BridgeConfig, DataConfig, ModelConfig, OTConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import DeparturesError  # noqa: E402

if TYPE_CHECKING:
    from .api import Model, fit, load
    from .io import load_demo, read

# imported on first use: `departures --help` and the config classes need no torch or scanpy
_LAZY = {"fit": "api", "load": "api", "Model": "api", "read": "io", "load_demo": "io"}

__all__ = [
    "BridgeConfig",
    "DataConfig",
    "DeparturesError",
    "Model",
    "ModelConfig",
    "OTConfig",
    "RunConfig",
    "TrainConfig",
    "__version__",
    "fit",
    "load",
    "load_demo",
    "read",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
