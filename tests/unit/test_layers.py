"""The package's layering: every import runs downward, and no private name crosses a
module (docs/guide.md, "Where things live")."""

import ast
from pathlib import Path

import risloc

ROOT = Path(risloc.__file__).parent

# bottom to top; a module may import its own package and any package of a lower layer
LAYERS = [
    {"config", "parallel"},
    {"physics", "io.atomic"},
    {"core", "simulation", "covariance"},
    {"io", "estimators"},
    {"evaluation"},
    {"model"},
    {"losses"},
    {"inference"},
    {"pipeline"},
    {"training"},
    {"hpo"},
    {"experiments"},
    {"cli", "__main__"},
]


def _package(module: str) -> str:
    parts = module.split(".")[1:]  # drop "risloc"
    if not parts:
        return "config"  # risloc/__init__.py holds only the version
    if parts[:2] == ["io", "atomic"]:
        return "io.atomic"
    return parts[0]


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package {package!r} is in no layer of this test")


def _imports():
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):  # function-local imports too
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("risloc"):
                yield module, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("risloc"):
                        yield module, a.name, []


def test_every_import_runs_downward():
    upward = sorted({f"{src} imports {dst}" for src, dst, _ in _imports()
                     if _layer(_package(dst)) > _layer(_package(src))})
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_a_module():
    crossing = sorted({f"{src} imports {dst}.{name}" for src, dst, names in _imports()
                       for name in names
                       if name.startswith("_") and not name.startswith("__") and dst != src})
    assert not crossing, "\n".join(crossing)
