"""The import rule of docs/architecture.md: arrows run down the layers, never up, never in a circle.

Every module's imports are parsed (module level, inside functions and under ``TYPE_CHECKING``
alike: a lazy import is still an arrow), and each one is checked against the layers below. Two
packages of one layer never import each other (a stage does not reach into another stage); the
base modules may use one another, and inside a package modules may use one another, but never in
a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "elmforge"

# Bottom to top, as written at the top of docs/architecture.md. A module belongs to the longest
# prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "lazy", "package_data", "config", "files", "layout", "runtime",
              "progress", "environment", "locks")),
    ("model", ("model",)),
    ("data", ("data",)),
    ("model-directory I/O", ("modeldir",)),
    ("engines", ("train", "infer")),
    ("scoring", ("evaluate",)),
    ("stages", ("finetune", "export", "serve")),
    ("apps", ("study", "bench", "demo")),
    ("cli", ("cli",)),
]  # fmt: skip

# The one allowed exception, and why: ``import elmforge`` must register OpenELM with transformers'
# Auto classes (transformers loads the config class through an import hook installed by the
# package's __init__), so the top-level package imports model.registration; modules that import
# ``elmforge`` itself (for __version__) reach the top-level package, which holds no logic.
ALLOWED = {
    ("elmforge", "elmforge.model.registration"),
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # ``from elmforge.x import y``: y is a module of the package or a name in x.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("elmforge") and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = all_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def room_of(module: str) -> tuple[int, str] | None:
    """(layer index, room) of a module: the room is its package, or the module itself in base."""
    rest = module.removeprefix("elmforge.")
    if rest == "elmforge":
        return None
    head = rest.split(".")[0]
    if head == "__main__":  # ``python -m elmforge``: the command itself
        head = "cli"
    for index, (_, rooms) in enumerate(LAYERS):
        if head in rooms:
            return index, head
    raise AssertionError(f"{module}: in no layer of docs/architecture.md; add its room to LAYERS")


def upward_and_sideways(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if (source, target) in ALLOWED or target == "elmforge":
                continue
            here, there = room_of(source), room_of(target)
            if here is None or there is None:
                continue
            if there[0] > here[0]:
                problems.append(
                    f"{source} imports {target}: up from {LAYERS[here[0]][0]} to "
                    f"{LAYERS[there[0]][0]}"
                )
            elif there[0] == here[0] and there[1] != here[1] and LAYERS[here[0]][0] != "base":
                problems.append(
                    f"{source} imports {target}: sideways between {here[1]}/ and {there[1]}/ "
                    f"(both {LAYERS[here[0]][0]})"
                )
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    edges = {
        source: {t for t in targets if (source, t) not in ALLOWED and t != "elmforge"}
        for source, targets in graph.items()
        if source != "elmforge"
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def describe_circle(group: list[str], graph: dict[str, set[str]]) -> str:
    arrows = [f"{a} -> {b}" for a in group for b in sorted(graph[a]) if b in group]
    return "circle: " + "; ".join(arrows)


def test_every_import_runs_down_a_layer() -> None:
    problems = upward_and_sideways(import_graph())
    assert not problems, "\n".join(problems)


def test_no_import_closes_a_circle() -> None:
    graph = import_graph()
    found = [describe_circle(group, graph) for group in circles(graph)]
    assert not found, "\n".join(found)


def test_the_layers_are_written_in_the_map() -> None:
    """docs/architecture.md opens with the same layers, bottom to top."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    head = text[: text.index("## Rooms")] if "## Rooms" in text else text
    positions = [head.find(f"**{name}**") for name, _ in LAYERS]
    assert all(p >= 0 for p in positions), [n for (n, _), p in zip(LAYERS, positions) if p < 0]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ("from elmforge.serve.app import build_app\n", "up from model to stages"),
        ("import elmforge.model.profile\n", "circle"),
    ],
)
def test_a_planted_bad_import_fails(tmp_path: Path, planted: str, expected: str) -> None:
    """The checks catch an upward import and a circle planted in a copy of the package."""
    import shutil

    copy = tmp_path / "elmforge"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    if expected == "circle":  # profile imports config; config importing profile closes a circle
        victim = copy / "model" / "config.py"
    else:
        victim = copy / "model" / "masks.py"
    victim.write_text(victim.read_text(encoding="utf-8") + "\n" + planted)
    graph = import_graph(copy)
    if expected == "circle":
        groups = circles(graph)
        assert any("elmforge.model.config" in g and "elmforge.model.profile" in g for g in groups)
        text = describe_circle(next(g for g in groups if "elmforge.model.profile" in g), graph)
        assert "elmforge.model.config -> elmforge.model.profile" in text
    else:
        problems = upward_and_sideways(graph)
        assert any(
            p.startswith("elmforge.model.masks imports elmforge.serve.app") and expected in p
            for p in problems
        ), problems


def test_every_environment_variable_is_documented() -> None:
    """Each ``ELMFORGE_*`` variable the package reads is in the README's table."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### Environment variables") :]
    used = set()
    for path in PACKAGE.rglob("*.py"):
        used |= set(re.findall(r"ELMFORGE_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    missing = sorted(name for name in used if f"`{name}`" not in table)
    assert used and not missing, missing


def test_no_module_imports_another_modules_private_names() -> None:
    """A leading underscore is private to its module: another module asking for it is reaching
    into internals (make the name public where it has a second user)."""
    found = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("elmforge"):
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")  # dunders: public
                ]
                found += [f"{name} imports {node.module}.{p}" for p in private]
    assert not found, "\n".join(found)
