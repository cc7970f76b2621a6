"""LightningModules: T2VModule, DreamVideoModule and DynamiCrafterModule."""

from dv.lit.dreamvideo import DreamVideoModule
from dv.lit.dynamicrafter import DynamiCrafterModule
from dv.lit.t2v import T2VModule

__all__ = ["T2VModule", "DreamVideoModule", "DynamiCrafterModule"]
