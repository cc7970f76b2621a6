"""LightningModules: T2VModule and DreamVideoModule."""

from dv.lit.dreamvideo import DreamVideoModule
from dv.lit.t2v import T2VModule

__all__ = ["T2VModule", "DreamVideoModule"]
