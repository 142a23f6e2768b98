"""The arrows of docs/architecture.md, checked: which part of kelpie may import which."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "src" / "kelpie"
ALLOWED: dict[str, set[str]] = {
    "api": {"store", "webhooks", "fleet", "config", "schemas"},
    "store": {"schemas"},
    "webhooks": {"store", "schemas"},
    "fleet": {"store", "schemas"},
    "client": {"schemas"},
    "worker": {"client", "storage", "schemas"},
    "storage": {"schemas"},
    "cli": {"api", "worker", "client", "storage", "demo", "config", "schemas"},
    "demo": {"client", "storage", "worker", "schemas"},
    "schemas": {"webhooks"},
    "config": {"webhooks"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Arrows that run the wrong way today, each to be removed (docs/architecture.md says how).
KNOWN_EXCEPTIONS = {
    ("webhooks/delivery.py", "api"),
    ("fleet/autoscaler.py", "api"),
    ("worker/main.py", "fleet"),
    ("worker/node.py", "fleet"),
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(path: Path) -> set[str]:
    """The parts of kelpie a module imports, at the top or inside a function."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("kelpie."):
                parts.add(name.split(".")[1])
    return parts


def leaves() -> set[str]:
    """Top-level modules that import nothing of kelpie: any part may use them."""
    return {
        path.stem
        for path in PACKAGE.glob("*.py")
        if path.stem not in ("__init__", "__main__") and not imported_parts(path)
    }


def test_every_import_follows_an_allowed_arrow() -> None:
    shared = leaves()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part in shared:
            continue
        assert part in ALLOWED, f"{path}: a new part; add it to docs/architecture.md and here"
        for target in imported_parts(path) - {part} - ALLOWED[part] - shared:
            where = str(path.relative_to(PACKAGE))
            if (where, target) not in KNOWN_EXCEPTIONS:
                wrong.append(f"{where} imports kelpie.{target}")
    assert wrong == []
