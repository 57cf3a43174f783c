"""The config kit: typed dataclass sections <-> YAML, dotted overrides, generated CLI flags.

Every config elmforge reads (the pretraining run, its ``data:`` section, fine-tuning and study
runs) is a tree of dataclasses whose fields carry a docstring (the string literal after the
field). This module is the one way to build them:

- :func:`build` turns a mapping into a validated instance: an unknown key or a value of the
  wrong type raises :class:`~elmforge.errors.ConfigError` naming the dotted key; a section that
  defines ``validate(self, key)`` checks its own cross-field rules after it is built;
- :func:`read_yaml` and :func:`apply_overrides` (``"optim.lr=1e-3"`` strings, values parsed as
  YAML then coerced to the field's type, so ``1e-3`` is a float even though YAML 1.1 reads a
  string) give the mapping;
- :func:`add_config_flags` generates one ``--section.key VALUE`` flag per documented leaf (its
  help is the field's docstring) plus ``--set KEY=VALUE`` for keys inside mappings such as
  ``model.shape.*``; :func:`overrides_of` turns the parsed flags back into override strings. Every
  verb that trains (pretrain, demo, finetune, study) uses these two, so the command-line grammar is
  the same everywhere: ``--optim.lr 1e-3`` and ``--optim.lr=1e-3`` both work.

Light on purpose (stdlib and PyYAML only): the CLI builds its parser from these schemas before
importing torch.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import inspect
import itertools
import math
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from elmforge.errors import ConfigError

T = TypeVar("T")
_FLAG_PREFIX = "config:"


# -- building ---------------------------------------------------------------------------------
def build(cls: type[T], data: Any, *, source: str = "config", prefix: str = "") -> T:
    """An instance of dataclass ``cls`` from ``data`` (a mapping), validated; errors name keys.

    Messages read ``SOURCE: KEY: problem``; sections' own ``validate(key)`` errors are prefixed
    with ``SOURCE`` the same way.
    """
    where = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(
                f"{source}: {prefix}{key}: unknown key (known: {', '.join(sorted(names))})"
            )
    kwargs = {key: _coerce(value, hints[key], prefix + key, source) for key, value in data.items()}
    try:
        instance = cls(**kwargs)
        validate = getattr(instance, "validate", None)
        if callable(validate):
            validate(where if prefix else "")
    except ConfigError as err:
        message = str(err)
        raise ConfigError(
            message if message.startswith(source) else f"{source}: {message}"
        ) from None
    return instance


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as type ``hint``, or a ConfigError naming ``key``."""
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, prefix=key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in sorted(args, key=_literal_first):
            with contextlib.suppress(ConfigError):
                return _coerce(value, option, key, source)
        raise ConfigError(f"{source}: {key}: expected {_describe(hint)}, got {_shown(value)}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and True in args):
            return value
        raise ConfigError(
            f"{source}: {key}: expected one of {', '.join(map(repr, args))}, got {_shown(value)}"
        )
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: {key}: expected null, got {_shown(value)}")
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {_shown(value)}")
        return dict(value)
    if origin is list or hint is list:
        names = args and (args[0] is str or typing.get_origin(args[0]) is Literal)
        if isinstance(value, str) and names:
            # A list of names on the command line: comma-separated (--lora.targets a,b).
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {_shown(value)}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: expected true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
                value = ast.literal_eval(value.replace("_", ""))
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: expected an integer, got {_shown(value)}")
    if hint is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{source}: {key}: expected a finite number, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key}: expected a string, got {_shown(value)}")
    if hint is Any:
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a schema bug, not user input


def _literal_first(option: Any) -> int:
    # Try exact literals and null before coercing strings into numbers.
    return 0 if typing.get_origin(option) is Literal or option is type(None) else 1


def _describe(hint: Any) -> str:
    parts = []
    for option in typing.get_args(hint):
        if typing.get_origin(option) is Literal:
            parts.extend(repr(a) for a in typing.get_args(option))
        elif option is type(None):
            parts.append("null")
        else:
            names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
            parts.append(names.get(option, getattr(option, "__name__", str(option))))
    return " or ".join(parts)


def to_dict(instance: Any) -> dict[str, Any]:
    return dataclasses.asdict(instance)


def to_yaml(instance: Any) -> str:
    return yaml.safe_dump(to_dict(instance), sort_keys=False)


# -- YAML and overrides -----------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (``{}`` when empty); one-line errors name the file.

    A name that is not a file but a packaged config (``tiny-cpu``) reads that config."""
    from elmforge.package_data import find_config, packaged_configs

    path = find_config(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file (packaged: {', '.join(packaged_configs())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"{path}: not valid YAML ({' '.join(first[:2])})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to ``raw`` in place (values parsed as YAML)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. optim.lr=1e-3)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {item!r}: {where} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    *,
    raw: dict[str, Any] | None = None,
    prepare: typing.Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> T:
    """``cls`` from a YAML file (or ``raw``, or the defaults) plus ``KEY=VALUE`` overrides.

    ``prepare(raw)`` adjusts the merged mapping before building (defaults that depend on other
    keys). An error that only the overrides cause is reported as the command line's, not the
    file's.
    """
    source = str(path) if path is not None else "config"
    if raw is None:
        raw = read_yaml(path) if path is not None else {}
    base = copy.deepcopy(raw)
    merged = apply_overrides(copy.deepcopy(raw), overrides)
    prepare = prepare or (lambda d: d)
    try:
        return build(cls, prepare(merged), source=source)
    except ConfigError as err:
        if not overrides:
            raise
        try:
            build(cls, prepare(base), source=source)
        except ConfigError:
            raise err from None
        message = str(err).removeprefix(f"{source}: ")
        raise ConfigError(f"command-line override: {message}") from None


# -- documentation and flags ------------------------------------------------------------------
@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (for docs and ``--help``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        for node, following in itertools.pairwise(tree.body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def documented_keys(cls: type) -> dict[str, str]:
    """Every dotted leaf key of the schema ``cls`` with its documentation."""
    keys: dict[str, str] = {}

    def walk(section: type, prefix: str) -> None:
        docs = field_docs(section)
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                keys[prefix + f.name] = docs.get(f.name, "")

    walk(cls, "")
    return keys


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str = "config overrides",
    skip: typing.Collection[str] = (),
) -> None:
    """One ``--KEY VALUE`` flag per documented leaf of ``cls`` (help: its docstring), and
    ``--set KEY=VALUE`` (repeatable) for any key, those inside mappings included."""
    group = parser.add_argument_group(
        title, "any config key, as --section.key VALUE or --section.key=VALUE"
    )
    for key, doc in documented_keys(cls).items():
        if key in skip:
            continue
        add_override_alias(group, f"--{key}", key, metavar="VALUE", help=doc.replace("%", "%%"))
    group.add_argument(
        "--set",
        dest=_OVERRIDES,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any key, including those inside mappings such as model.shape.* (repeatable; "
        "with the --section.key flags, the last one given wins)",
    )


def add_override_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, key: str, **kwargs: Any
) -> None:
    """A flag that overrides ``key``: the generated ``--section.key`` flags and short aliases
    (``--loss`` for ``dpo.loss``) join one ordered list, so whichever is given last wins."""
    parser.add_argument(
        flag, dest=_OVERRIDES, action=_KeyOverride, key=key, default=argparse.SUPPRESS, **kwargs
    )


# Every override flag appends to this one list, so they apply in command-line order: with
# ``--set optim.lr=1 --optim.lr 2`` the learning rate is 2, as the user typed last.
_OVERRIDES = _FLAG_PREFIX + "overrides"


class _KeyOverride(argparse.Action):
    """``--section.key VALUE``: appends ``section.key=VALUE`` to the overrides, in order."""

    def __init__(self, option_strings: list[str], dest: str, key: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(f"{self.key}={values}")
        setattr(namespace, self.dest, items)


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The ``KEY=VALUE`` overrides given through :func:`add_config_flags`' flags, in the order
    they were given (later ones win)."""
    given = list(getattr(args, _OVERRIDES, None) or [])
    for item in given:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item}: expected KEY=VALUE (e.g. model.shape.num_transformer_layers=4)"
            )
    return given
