"""Training: run configs, the training loop, checkpoints, the run directory, distributed set-up,
logging.

Names are imported on first use, so ``elmforge.train.run_dir`` and the config kit load without
torch (the CLI parses its arguments before importing anything heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RunConfig": "elmforge.train.config",
    "average_checkpoints": "elmforge.train.checkpoint",
    "pretrain": "elmforge.train.loop",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elmforge.train' has no attribute {name!r}")
