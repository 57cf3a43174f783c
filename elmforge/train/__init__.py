"""Training: run configs, the training loop, checkpoints, the run directory, distributed set-up,
logging.

Names are imported on first use, so ``elmforge.layout`` and the config kit load without
torch (the CLI parses its arguments before importing anything heavy).
"""

from __future__ import annotations

from elmforge.lazy import lazy_attributes

_LAZY = {
    "RunConfig": "elmforge.train.config",
    "average_checkpoints": "elmforge.train.checkpoint",
    "pretrain": "elmforge.train.loop",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
