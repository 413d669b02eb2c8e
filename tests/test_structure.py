"""The package's parts import each other in one direction only (no cycles, lazy imports included)."""

import ast
from collections import defaultdict
from pathlib import Path

import autocompress

ROOT = Path(autocompress.__file__).parent


def _part_edges() -> dict[str, set[str]]:
    """part -> parts it imports; a part is a top-level module or subpackage of autocompress."""
    edges: dict[str, set[str]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        part = f.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                bits = name.split(".")
                if bits[0] == "autocompress" and len(bits) > 1 and bits[1] != part:
                    edges[part].add(bits[1])
    return edges


def test_no_import_cycle_between_parts():
    edges = _part_edges()

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in edges.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    cyclic = sorted(p for p in edges if p in reachable(p))
    pairs = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a < b and a in edges.get(b, ()))
    assert not cyclic, f"import cycles through {cyclic}: {pairs}"


RUNTIMES = {"onnxruntime": "targets/onnxruntime.py", "executorch": "targets/executorch.py",
            "torchao": "targets/executorch.py"}


def test_runtime_packages_are_imported_only_by_their_target():
    """A runtime package (lazy imports included) appears in its target module alone; ``export/``
    builds ONNX graphs with ``onnx``, which is not a runtime."""
    wrong = []
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                top = name.split(".")[0]
                if top in RUNTIMES and rel != RUNTIMES[top]:
                    wrong.append(f"{rel} imports {name}")
    assert not wrong, wrong
