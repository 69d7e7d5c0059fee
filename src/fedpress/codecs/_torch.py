"""`torch`, imported on first use: the codec modules import without it.

Why: a codec's `Options` dataclass is its config section (`[codec.topk]`), and `fedpress
config` validates every section before anything heavy loads (torch takes seconds to import).
Codec modules write `torch.topk(...)` as usual; the first attribute looked up imports torch.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__name__), name)


torch = _LazyModule("torch")
