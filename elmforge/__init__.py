"""elmforge: the OpenELM language-model family, native in transformers.

Importing the package registers ``OpenELMConfig`` / ``OpenELMModel`` / ``OpenELMForCausalLM`` with
transformers' Auto classes, so ``AutoModelForCausalLM.from_pretrained(dir)`` loads Apple's layout
without ``trust_remote_code``.
"""

from elmforge.errors import CheckpointError, ConfigError, DataError, ElmforgeError
from elmforge.model.config import OpenELMConfig, make_divisible
from elmforge.model.modeling import OpenELMForCausalLM, OpenELMModel, OpenELMPreTrainedModel

__version__ = "0.1.0"

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
