"""Layers point down: every import in ``src/fheqnn``, lazy ones inside functions included.

The picture, bottom to top (a module may import its own component and anything in a lower
layer; components of one layer do not import each other):

    6  cli
    5  bench
    4  model (torch/brevitas network, training, ONNX export) | serving | tabular | datasets
    3  compiler (ONNX front end, passes, lowering, bit-width report, Concrete back end, api)
    2  runtime (model folders, keys, envelopes, client, server) with the client contract
    1  concrete_seam: the one module that imports Concrete
    0  base: errors, validation, intervals, files, interrupts, and the integer IR (ir, kernels,
       linear_ops, rounding, serialize), which the runtime reads and the compiler writes

``fheqnn/__init__.py`` is the lazy facade over all of them; ``from fheqnn import X`` inside the
package counts as an import of the module that defines ``X``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layers, bottom first; each a tuple of components, each component a tuple of module prefixes.
LAYERS: tuple[tuple[tuple[str, ...], ...], ...] = (
    (
        (
            "fheqnn.errors",
            "fheqnn.validation",
            "fheqnn.intervals",
            "fheqnn.fileio",
            "fheqnn.interrupts",
            "fheqnn.compiler.ir",
            "fheqnn.compiler.kernels",
            "fheqnn.compiler.linear_ops",
            "fheqnn.compiler.rounding",
            "fheqnn.compiler.serialize",
        ),
    ),
    (("fheqnn.concrete_seam",),),
    (("fheqnn.runtime", "fheqnn.contract"),),
    (("fheqnn.compiler",),),
    (("fheqnn.model",), ("fheqnn.serving",), ("fheqnn.tabular",), ("fheqnn.datasets",)),
    (("fheqnn.bench",),),
    (("fheqnn.cli",),),
)


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def place(module: str) -> tuple[int, int]:
    """(layer, component) of a module: the most specific prefix wins (compiler.ir is base)."""
    best: tuple[int, int, int] | None = None
    for layer, components in enumerate(LAYERS):
        for index, prefixes in enumerate(components):
            for prefix in prefixes:
                if _matches(module, prefix) and (best is None or len(prefix) > best[2]):
                    best = (layer, index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[0], best[1]


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _exists(module: str) -> bool:
    base = SRC / module.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _facade_exports() -> dict[str, str]:
    """Name -> defining module of the package facade (``fheqnn._EXPORTS``), read from source."""
    tree = ast.parse((SRC / "fheqnn" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            table = ast.literal_eval(node.value)
            return {name: "fheqnn" + module for name, module in table.items()}
    raise AssertionError("fheqnn/__init__.py defines no _EXPORTS")


def imports() -> list[Import]:
    """Every import of an fheqnn or concrete module in the package, with where it is."""
    facade = _facade_exports()
    found: list[Import] = []
    for path in sorted((SRC / "fheqnn").rglob("*.py")):
        source = _module_name(path)
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [Import(source, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    named = f"{target}.{alias.name}"
                    if _exists(named):
                        found.append(Import(source, named, node.lineno))
                    elif target == "fheqnn" and alias.name in facade:
                        found.append(Import(source, facade[alias.name], node.lineno))
                    else:
                        found.append(Import(source, target, node.lineno))
    return [i for i in found if i.target.split(".")[0] in ("fheqnn", "concrete")]


def test_the_import_scan_sees_lazy_and_relative_imports() -> None:
    # If the scan missed imports, the layer test below would pass on anything.
    found = {(i.source, i.target) for i in imports()}
    assert ("fheqnn.concrete_seam", "concrete") in found  # inside a function
    assert ("fheqnn.runtime.client", "fheqnn.contract") in found  # relative, top level
    assert ("fheqnn.compiler.api", "fheqnn.runtime.artifacts") in found
    assert len(found) > 100


def test_every_module_has_a_place() -> None:
    for path in sorted((SRC / "fheqnn").rglob("*.py")):
        module = _module_name(path)
        if module != "fheqnn":
            place(module)


def test_imports_only_point_down() -> None:
    wrong = []
    for imp in imports():
        if imp.source == "fheqnn" or imp.target.split(".")[0] != "fheqnn" or imp.target == "fheqnn":
            continue
        (src_layer, src_part), (dst_layer, dst_part) = place(imp.source), place(imp.target)
        if dst_layer > src_layer or (dst_layer == src_layer and dst_part != src_part):
            wrong.append(f"{imp.source}:{imp.line} imports {imp.target}")
    assert wrong == [], "imports that do not point down:\n" + "\n".join(wrong)


def test_only_the_seam_imports_concrete() -> None:
    direct = [
        f"{i.source}:{i.line}"
        for i in imports()
        if i.target.split(".")[0] == "concrete" and i.source != "fheqnn.concrete_seam"
    ]
    assert direct == []
