"""Imports point down (DESIGN.md): evals -> tiers -> runners -> hardware. Read from the source with ast, so an
import inside a function, or one only for type checking, counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"hardware": 0, "runners": 1, "tiers": 2, "evals": 3}


def imported_packages(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the file; relative imports resolve to the file's package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            top = path.relative_to(root).parts[0] if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, top))
    return found


def arrows_pointing_up(root: Path = REPO) -> list[str]:
    wrong = []
    for package, layer in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, imported in imported_packages(path, root):
                if LAYERS.get(imported, -1) > layer:
                    wrong.append(f"{path.relative_to(root)}:{line} imports {imported} ({package} is below it)")
    return wrong


def test_imports_point_down():
    assert arrows_pointing_up() == []


def test_the_check_sees_lazy_imports_and_type_checking_blocks(tmp_path):
    (tmp_path / "hardware").mkdir()
    (tmp_path / "runners").mkdir()
    (tmp_path / "hardware" / "late.py").write_text("def late():\n    from tiers import routing\n    return routing\n")
    (tmp_path / "runners" / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                   "    import evals.store\nfrom . import base\nimport hardware\n")
    assert arrows_pointing_up(tmp_path) == ["hardware/late.py:2 imports tiers (hardware is below it)",
                                            "runners/typed.py:3 imports evals (runners is below it)"]
