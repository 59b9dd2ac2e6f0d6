"""adaptive_dd: training-free diffusion dataset distillation with adaptive (beta, gamma) sampling and repulsion.

    from adaptive_dd import DistillConfig, Distiller, export
    dist = Distiller(DistillConfig(data="uci-digits", ipc=10))
    list(export(dist.run(), "out/uci10", dist.config, dist.dataset.classes, dist.describe()))
"""
from __future__ import annotations

try:  # a ZeroGPU Space needs `spaces` imported before torch, which the imports below load
    import spaces  # noqa: F401
except ImportError:
    pass

from .backends import Backend, create_backend
from .config import BOConfig, ConfigError, DistillConfig, RepulsionConfig, SamplerConfig
from .distill import BatchDone, BatchSummary, BOStep, ClassDone, Distiller, Regenerated, RunDone, seed_plan
from .evaluation import evaluate
# The function, not the module of the same name: bound after the submodule is loaded, so it stays bound.
from .export import ExportError, export
from .fidelity import ModelLoadError, Teacher, load_teacher

__all__ = ["BOConfig", "BOStep", "Backend", "BatchDone", "BatchSummary", "ClassDone", "ConfigError", "DistillConfig",
           "Distiller", "ExportError", "ModelLoadError", "Regenerated", "RepulsionConfig", "RunDone", "SamplerConfig",
           "Teacher", "create_backend", "evaluate", "export", "load_teacher", "seed_plan"]
