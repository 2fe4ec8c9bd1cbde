"""The package's layering, read from the source: every ``ditkit`` import (at module level and inside functions,
relative imports resolved) goes to the same layer or a lower one, no modules import each other in a cycle, and no
``ditkit`` module is imported inside a function (imports inside functions are kept for optional third-party
packages).

A module's layer is its first path component under ``ditkit/`` (``ditkit/models/dit.py`` -> ``models``). The layers,
lowest first, are ``LAYERS``; each may import only itself and the layers before it. ``ditkit/__init__.py`` is the
public facade: it may import anything and nothing in the package may import it. An import of a module is an edge to
that module only (not to the ``__init__`` of the packages above it), so a package's ``__init__`` may name its
submodules.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ditkit"

LAYERS = ["core", "data", "models", "diffusion", "hooks", "parallel", "acceleration", "adapters", "pipelines", "training", "evaluation",
          "bench", "cli"]
FACADE = "ditkit"                                    # the top-level __init__: above every layer
OPTIONAL = {"diffusers", "cache_dit", "transformers", "matplotlib", "av", "skimage", "sklearn", "mlxtend"}


def module_name(path: str) -> str:
    """'ditkit/models/dit.py' -> 'ditkit.models.dit'; 'ditkit/cli/__init__.py' -> 'ditkit.cli'."""
    parts = path[:-len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return FACADE if len(parts) == 1 else parts[1] if parts[1] in LAYERS else parts[1] + " (no layer)"


def rank(layer: str) -> int:
    return LAYERS.index(layer) if layer in LAYERS else len(LAYERS)


class Imports(ast.NodeVisitor):
    """(line, imported module or 'module.name', inside a function?) for every import of a module's source."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[int, str, bool]] = []
        self.depth = 0

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((node.lineno, alias.name, self.depth > 0))

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package.split(".")
            base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module
        for alias in node.names:
            self.found.append((node.lineno, f"{base}:{alias.name}", self.depth > 0))

    def visit_Call(self, node):
        """``importlib.import_module('ditkit...')`` / ``__import__('ditkit...')`` count as imports too."""
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self.found.append((node.lineno, node.args[0].value, self.depth > 0))
        self.generic_visit(node)


def check(sources: dict[str, str]) -> list[str]:
    """Layering errors of a package given as {path under the repository ('ditkit/...py'): source}, each naming the
    file, the line and both layers; [] if the layering holds."""
    modules = {module_name(path): path for path in sources}
    errors, edges = [], {m: set() for m in modules}

    def resolve(target: str) -> str | None:
        """'pkg.mod:name' -> the module imported ('pkg.mod.name' if that is a module, else 'pkg.mod'); 'a.b.c' -> the
        longest prefix that is a module of the package."""
        base, _, name = target.partition(":")
        if name and f"{base}.{name}" in modules:
            return f"{base}.{name}"
        parts = base.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    for module, path in modules.items():
        finder = Imports(module, path.endswith("__init__.py"))
        finder.visit(ast.parse(sources[path], filename=path))
        for line, target, in_function in finder.found:
            top = target.partition(":")[0].split(".")[0]
            where = f"{path}:{line}"
            if top != "ditkit":
                if in_function and top not in OPTIONAL:
                    errors.append(f"{where}: imports {target.replace(':', '.')} inside a function; only optional "
                                  f"third-party packages ({', '.join(sorted(OPTIONAL))}) may be imported there")
                continue
            imported = resolve(target)
            if imported is None:
                errors.append(f"{where}: imports {target.replace(':', '.')}, which is no module of the package")
                continue
            src, dst = layer_of(module), layer_of(imported)
            if in_function:
                errors.append(f"{where}: imports {imported} ({dst}) inside a function; ditkit imports belong at the "
                              f"top of the module ({src})")
            if imported == "ditkit" and module != "ditkit":
                errors.append(f"{where}: {module} ({src}) imports the public facade ditkit/__init__.py, which only "
                              f"the outside may import")
            elif rank(dst) > rank(src) and module != "ditkit":
                errors.append(f"{where}: {module} ({src}) imports {imported} ({dst}), a higher layer")
            edges[module].add(imported)
    for cycle in cycles(edges):
        errors.append("import cycle: " + " -> ".join(modules[m] for m in cycle + cycle[:1]))
    return errors


def shortest_loop(start: str, component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest import path from ``start`` back to itself inside ``component`` (breadth first)."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(edges[path[-1]]):
            if w == start:
                return path
            if w in component and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return [start]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One loop of imports for each strongly connected component of more than one module (or a module importing
    itself), found with Tarjan's algorithm."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                out.append(shortest_loop(min(component), set(component), edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def package_sources() -> dict[str, str]:
    root = PACKAGE.parent
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert not [p for p in package_sources() if layer_of(module_name(p)).endswith("(no layer)")]


def test_imports_go_down_the_layers_without_cycles():
    errors = check(package_sources())
    assert not errors, "\n".join(errors)


def with_line(sources: dict[str, str], path: str, line: str, in_function: bool = False) -> dict[str, str]:
    text = f"\n\ndef _added():\n    {line}\n" if in_function else f"\n{line}\n"
    return {**sources, path: sources[path] + text}


def test_the_checker_names_an_upward_import():
    sources = package_sources()
    line = len(sources["ditkit/models/dit.py"].splitlines()) + 2
    errors = check(with_line(sources, "ditkit/models/dit.py", "from ..cli import main"))
    assert errors[0] == f"ditkit/models/dit.py:{line}: ditkit.models.dit (models) imports ditkit.cli (cli), a higher " \
                        f"layer", errors
    assert all(e.startswith("import cycle: ") for e in errors[1:]), errors          # the CLI imports the models


def test_the_checker_names_a_function_level_import_and_a_cycle():
    sources = package_sources()
    errors = check(with_line(sources, "ditkit/models/stack.py", "from .dit import DiT", in_function=True))
    assert any(e.startswith("ditkit/models/stack.py:") and "inside a function" in e for e in errors), errors
    assert any(e.startswith("import cycle: ") and "ditkit/models/dit.py" in e and "ditkit/models/stack.py" in e
               for e in errors), errors
    errors = check(with_line(sources, "ditkit/acceleration/counting.py", "import os", in_function=True))
    assert len(errors) == 1 and "imports os inside a function" in errors[0], errors


def test_the_checker_guards_the_facade():
    errors = check(with_line(package_sources(), "ditkit/core/config.py", "import ditkit"))
    assert "imports the public facade" in errors[0] and "(core)" in errors[0], errors
    assert len(errors) == 2 and errors[1].startswith("import cycle: ditkit/__init__.py -> ") \
        and "ditkit/core/config.py -> ditkit/__init__.py" in errors[1], errors
