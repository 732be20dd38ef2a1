"""The package layers (docs/architecture.md): a module imports only from its own layer or below,
and train / eval never import each other. Function-level imports count too. Also: no module
over the size limit, and no family named outside its registry entry."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "mmtlab"

# Lower layers first; a module may import its own layer or any lower one. Names are the first
# component under mmtlab/ (a package or a module).
LAYERS = [
    {"io", "progress", "batches", "families", "config", "rundir"},
    {"data"},
    {"models"},
    {"objectives"},
    {"api", "__init__"},
    {"train", "eval"},
    {"diagnostics"},
    {"evaluate", "study", "report", "cli"},
]
PEERS_THAT_MUST_NOT_MEET = [("train", "eval")]
MAX_LINES = 450


def unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def rank(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"mmtlab.{name} is in no layer: add it to LAYERS and docs/architecture.md")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, first component) of every `mmtlab.X` this file imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "mmtlab":
                names = [f"mmtlab.{a.name}" for a in node.names]
        for n in names:
            if n.startswith("mmtlab."):
                found.append((node.lineno, n.split(".")[1]))
    return found


def graph() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        src = unit(path)
        for line, dst in imports(path):
            if dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(SRC)}:{line}")
    return edges


def test_no_import_against_the_layers():
    bad = []
    for (src, dst), where in graph().items():
        if rank(dst) > rank(src):
            bad.append(f"{src} -> {dst} ({where[0]})")
        if (src, dst) in PEERS_THAT_MUST_NOT_MEET or (dst, src) in PEERS_THAT_MUST_NOT_MEET:
            bad.append(f"{src} -> {dst} ({where[0]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from mmtlab.train.loop import train\n    import mmtlab.eval.runs\n")
    assert imports(f) == [(2, "train"), (3, "eval")]


def test_no_module_over_the_size_limit():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split by concept: {long}"


# Family names as string literals in comparisons (`arch == "flamingo"`, `in ("lm", ...)`) or as
# hasattr probes on a model: the switches the registry replaces.
SWITCH = re.compile(r"""(\.arch\s*(==|!=|not in|in)\s)|hasattr\(\s*(self\.)?model\s*,""")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_family_switch_outside_the_registry(path):
    if path.name == "families.py":
        return
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1) if SWITCH.search(line)]
    assert not hits, "tell families apart through mmtlab/families.py:\n" + "\n".join(hits)


if __name__ == "__main__":  # `python tests/test_layering.py`: the graph between units, by layer
    edges = graph()
    for i, layer in enumerate(LAYERS):
        for src in sorted(layer):
            deps = sorted({d for (s, d) in edges if s == src}, key=lambda d: (rank(d), d))
            print(f"L{i} {src:12s} -> {', '.join(deps) or '-'}")
