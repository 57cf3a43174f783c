"""elmforge: the OpenELM language-model family, native in transformers.

``import elmforge`` is cheap: the ``elmforge`` command parses its arguments before torch loads.
The model classes below load on first use, and OpenELM joins transformers' Auto classes as soon as
they are imported (before or after elmforge), so ``AutoModelForCausalLM.from_pretrained(dir)``
loads Apple's layout without ``trust_remote_code`` (see :mod:`elmforge.model.registration`).
"""

from __future__ import annotations

from elmforge.errors import CheckpointError, ConfigError, DataError, ElmforgeError
from elmforge.lazy import lazy_attributes
from elmforge.model import registration as _registration

__version__ = "0.1.0"

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    "OpenELMConfig": "elmforge.model.config",
    "make_divisible": "elmforge.model.config",
    "OpenELMForCausalLM": "elmforge.model.modeling",
    "OpenELMModel": "elmforge.model.modeling",
    "OpenELMPreTrainedModel": "elmforge.model.modeling",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ElmforgeError",
    "OpenELMConfig",
    "OpenELMForCausalLM",
    "OpenELMModel",
    "OpenELMPreTrainedModel",
    "__version__",
    "make_divisible",
]


__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


_registration.install()
