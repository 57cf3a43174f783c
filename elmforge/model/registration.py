"""OpenELM in transformers' Auto classes, without importing torch at ``import elmforge``.

The README promises that after ``import elmforge``, ``AutoModelForCausalLM.from_pretrained(dir)``
loads a directory whose ``config.json`` says ``model_type: openelm``. Registering eagerly would
cost every ``import elmforge`` (and so every ``elmforge --help``) torch and transformers, about
5-7 s here; so registration happens in two steps, each at the first moment it can matter:

1. **The config class**, when transformers' ``configuration_auto`` module is imported (``AutoConfig``
   cannot be used before): at ``import elmforge`` if it already is, else by a meta-path hook
   that runs right after that module executes. ``elmforge.model.config`` registers itself on
   import and needs only ``configuration_utils``, which ``configuration_auto`` has loaded.
2. **The model classes**, when the first :class:`~elmforge.model.config.OpenELMConfig` is built
   (every Auto model path builds the config first). Doing it in the hook instead would import
   ``modeling_utils`` while transformers may itself be half-way through importing it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"


def register_config() -> None:
    """Register ``OpenELMConfig`` with ``AutoConfig`` (importing it does)."""
    importlib.import_module("elmforge.model.config")


def register_models() -> None:
    """Register ``OpenELMModel`` / ``OpenELMForCausalLM`` with ``AutoModel*`` (importing them does)."""
    importlib.import_module("elmforge.model.modeling")


class _RunAfter(importlib.abc.Loader):
    """The real loader of a module, then ``action()`` once the module has executed."""

    def __init__(self, loader: Any, action: Any) -> None:
        self.loader, self.action = loader, action

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.action()

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self.loader, name)


class _AutoConfigHook(importlib.abc.MetaPathFinder):
    """Registers the config class right after ``configuration_auto`` is imported, then leaves."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != AUTO_CONFIG_MODULE:
            return None
        uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunAfter(spec.loader, register_config)
                return spec
        return None


_HOOK = _AutoConfigHook()


def install() -> None:
    """Arrange for OpenELM's registration (called by ``import elmforge``)."""
    if AUTO_CONFIG_MODULE in sys.modules:
        register_config()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
