"""Whether a model name that is no local path can come from the Hugging Face hub, decided at once.

Without this, a typo in a path ("runs/tiny/fnal") or a hub that cannot be reached reaches
``huggingface_hub``'s downloads, which retry five times with backoff (about 50 s of noise) before
the one-line error. Here a name that looks like a path fails at once; offline
(``HF_HUB_OFFLINE=1``) only the local hub cache counts; online one request, never retried, tells
a missing repository and an unreachable hub apart.
"""

from __future__ import annotations

import functools
import os
import re

from elmforge.errors import CheckpointError, first_line

# What the hub accepts as "name" or "org/name" (huggingface_hub's validate_repo_id, simplified).
HUB_NAME = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


def looks_like_a_path(spec: str) -> bool:
    """Whether ``spec`` can only mean a local path: it starts with ``.``, ``/`` or ``~``, has
    more than one ``/`` (or a backslash, or ends with one), or is not a valid hub name."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or spec.endswith(("/", "\\"))
        or "\\" in spec
        or not HUB_NAME.match(spec)
    )


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the network (as set now: huggingface_hub reads it once,
    at import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


@functools.cache
def check_hub_model(name: str) -> None:
    """Nothing if the hub model ``name`` is in the local cache or (online) exists on the hub;
    else a one-line :class:`CheckpointError` that says which of the three it is."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return
    if offline():
        raise CheckpointError(
            f"{name}: no such model directory, and not in the local Hugging Face cache "
            "(HF_HUB_OFFLINE is set)"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=10)
    except GatedRepoError:
        return  # it exists; the download says what access it needs
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{name}: no such model directory, and no such model on the Hugging Face hub"
        ) from None
    except Exception as err:  # connection refused, DNS, timeout: the hub cannot be reached
        raise CheckpointError(
            f"{name}: no such model directory, and the Hugging Face hub cannot be reached "
            f"({first_line(err)}); give a local directory, or set HF_HUB_OFFLINE=1 to use the "
            "local cache"
        ) from None
