"""The shape of the code: which module may import what (the dependency direction of DESIGN.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ("spikeprop.train", "spikeprop.config", "spikeprop.runs", "models")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def uses(found: set[str], module: str) -> bool:
    return any(name == module or name.startswith(module + ".") for name in found)


def test_only_the_deployment_module_of_hardware_reads_run_directories_or_the_training_harness():
    offenders = {p.name: sorted(m for m in HARNESS if uses(imports(p), m))
                 for p in (ROOT / "hardware").glob("*.py") if p.name != "deploy.py"}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert {m for m in HARNESS if uses(imports(ROOT / "hardware" / "deploy.py"), m)} == set(HARNESS)


def test_spikeprop_imports_neither_hardware_nor_lava_at_module_level():
    for path in (ROOT / "spikeprop").rglob("*.py"):
        top = set()
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.Import):
                top |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module)
        assert not any(uses(top, m) for m in ("hardware", "lava", "models")), path


def test_only_hardware_lava_imports_lava():
    for path in [*(ROOT / "hardware").glob("*.py"), *(ROOT / "spikeprop").rglob("*.py")]:
        if path.name != "lava.py":
            assert not uses(imports(path), "lava"), path
