"""adaptive_dd: training-free diffusion dataset distillation with adaptive (beta, gamma) sampling and repulsion.

    from adaptive_dd import DistillConfig, Distiller, export
    dist = Distiller(DistillConfig(data="uci-digits", ipc=10))
    list(export(dist.run(), "out/uci10", dist.config, dist.dataset.classes, dist.describe()))

The names load on first use: importing the package pulls in no torch, so a ZeroGPU Space can import `spaces`
first (adaptive_dd.app_handlers does).
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Distiller": ".distill", "BOStep": ".distill", "BatchDone": ".distill", "BatchSummary": ".distill",
    "ClassDone": ".distill", "RunDone": ".distill", "Regenerated": ".distill", "seed_plan": ".distill",
    "DistillConfig": ".config", "BOConfig": ".config", "SamplerConfig": ".config", "RepulsionConfig": ".config",
    "ConfigError": ".config",
    "create_backend": ".backends", "Backend": ".backends",
    "load_teacher": ".fidelity", "Teacher": ".fidelity", "ModelLoadError": ".fidelity",
    "export": ".export", "ExportError": ".export",
    "evaluate": ".evaluation",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'adaptive_dd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
