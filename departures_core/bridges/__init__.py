"""Bridge maths: the Brownian bridge (SDE) and the on/off CTMC."""

from . import ctmc, sde

__all__ = ["ctmc", "sde"]
