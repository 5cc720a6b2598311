"""nextoken: pretrain decoder-only transformers by next-token prediction.

The Python API (nextoken/api.py): `train`, `Run`, `evaluate`, `evaluate_tasks`, `evaluate_harness`, `sample`,
`next_token`, `plan`, `fit`, `prepare`, `build_config`. Names load on first use, so `import nextoken` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {"train": "nextoken.api", "evaluate": "nextoken.api", "evaluate_tasks": "nextoken.api",
        "evaluate_harness": "nextoken.api", "sample": "nextoken.api", "next_token": "nextoken.api",
        "plan": "nextoken.api", "fit": "nextoken.api", "prepare": "nextoken.api", "Run": "nextoken.run",
        "Config": "nextoken.config", "build_config": "nextoken.config"}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nextoken' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
