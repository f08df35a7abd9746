"""The method API, backbones, the shared training pieces and SGG.

The public method API (what a submitted method subclasses) is importable from here."""
from .api import EpisodeContext, MetaContext, Method, MethodConfig, Predictor
from ..store.schema import Figure

__all__ = ["EpisodeContext", "Figure", "MetaContext", "Method", "MethodConfig", "Predictor"]
