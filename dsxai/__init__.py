"""dsxai: see why a detector or segmenter fired, one heatmap per box and per mask.

The core (this package) is model-agnostic; model families live in ``dsxai.adapters``.
"""
from ._version import __version__
from .auditing import AuditResult, audit
from .detections import Detections
from .engine import ActivationCAM, BaseCAM, CAMResult, normalize_maps
from .explanation import Explanation
from .gradient import GradientCAM
from .layers import list_layers, resolve_layers
from .methods import (
    METHODS, AblationCAM, EigenCAM, EigenGradCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
    XGradCAM, get_method,
)
from .perturbation import PerturbationCAM
from .pipeline import explain
from .targets import ClassTarget, MaskTarget, OutputIndexTarget, Target

__all__ = [
    "__version__", "audit", "AuditResult", "Detections", "Explanation", "explain", "BaseCAM", "CAMResult",
    "GradientCAM", "ActivationCAM", "PerturbationCAM", "normalize_maps", "list_layers", "resolve_layers",
    "METHODS", "get_method", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM",
    "EigenGradCAM", "ScoreCAM", "AblationCAM", "Target", "ClassTarget", "OutputIndexTarget", "MaskTarget",
]
