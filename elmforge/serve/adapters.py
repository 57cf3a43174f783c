"""Per-request adapters: ``--adapter NAME=DIR`` (repeatable) serves several LoRA adapters over
one base model without merging them; a request's ``model`` picks one (or the base).

All adapters are loaded into one PEFT model (``modeldir.adapters.load_adapter``, then PEFT's
``load_adapter`` for the others); the engine runs every forward with PEFT's mixed-batch
inference (``adapter_names``, one per row, ``"__base__"`` for the base), so rows of different
adapters and of the base decode in the same batch: each LoRA layer adds its adapter's product
to its own rows only. PEFT's mixed batches do not cover DoRA, so a DoRA adapter is refused in
this mode (one alone, ``--adapter DIR``, is merged as before and works).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from elmforge.errors import OptionError

BASE = "__base__"  # PEFT's name for rows without an adapter


def parse_adapter_flags(values: Sequence[str] | str | None) -> tuple[str | None, dict[str, str]]:
    """(the one adapter to merge, or None; {served name: directory} to serve unmerged)."""
    if values is None or isinstance(values, str):
        return values, {}
    values = list(values)
    if len(values) == 1 and "=" not in values[0]:
        return values[0], {}
    named: dict[str, str] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise OptionError(
                "adapter", f"{{option}} {value!r}: several adapters are given as NAME=DIR each"
            )
        if name in named:
            raise OptionError("adapter", f"{{option}} {name}: the name is given twice")
        named[name] = directory
    return None, named


def load_named_adapters(model: Any, adapters: dict[str, str]) -> Any:
    """A PEFT model over ``model`` holding every adapter under its served name."""
    from elmforge.modeldir.adapters import load_adapter, quiet_peft

    for name, directory in adapters.items():
        config = Path(directory) / "adapter_config.json"
        if config.is_file() and json.loads(config.read_text()).get("use_dora"):
            raise OptionError(
                "adapter",
                f"{{option}} {name}={directory}: a DoRA adapter cannot share a batch with others "
                "(PEFT's mixed-batch inference covers LoRA only); serve it alone with "
                "--adapter DIR (merged)",
            )
    names = list(adapters)
    peft_model = load_adapter(model, adapters[names[0]])
    if names[0] != "default":  # PEFT loads the first one as "default"
        with quiet_peft():
            peft_model.load_adapter(adapters[names[0]], adapter_name=names[0])
            peft_model.delete_adapter("default")
    for name in names[1:]:
        with quiet_peft():
            peft_model.load_adapter(adapters[name], adapter_name=name)
    return peft_model.eval()


@contextlib.contextmanager
def rows_with_adapters(peft_model: Any, names: list[str]) -> Iterator[None]:
    """Within this context, row ``i`` of every forward uses adapter ``names[i]``."""
    with peft_model.base_model._enable_peft_forward_hooks(adapter_names=names):
        yield
