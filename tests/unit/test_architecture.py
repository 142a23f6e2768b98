"""The arrows of docs/architecture.md, checked: which part of kelpie may import which."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "src" / "kelpie"
ALLOWED: dict[str, set[str]] = {
    "api": {"store", "webhooks", "fleet", "config", "schemas"},
    "store": set(),
    "webhooks": {"store", "schemas"},
    "fleet": {"store", "schemas"},
    "client": {"schemas"},
    "worker": {"client", "storage", "schemas"},
    "storage": {"schemas"},
    "cli": {"api", "worker", "client", "storage", "demo", "config", "schemas"},
    "demo": {"client", "storage", "worker", "schemas"},
    "schemas": {"webhooks", "store"},
    "config": {"webhooks"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Arrows allowed to reach only these modules of their target part.
ONLY: dict[tuple[str, str], set[str]] = {
    # The wire reuses the domain's words (a job's status, an attempt's outcome), nothing else.
    ("schemas", "store"): {"kelpie.store.models"},
}


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_modules(path: Path) -> set[str]:
    """The modules of kelpie a module imports, at the top or inside a function."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        modules.update(name for name in names if name.startswith("kelpie."))
    return modules


def imported_parts(path: Path) -> set[str]:
    """The parts of kelpie a module imports."""
    return {name.split(".")[1] for name in imported_modules(path)}


def leaves() -> set[str]:
    """Top-level modules that import nothing of kelpie: any part may use them."""
    return {
        path.stem
        for path in PACKAGE.glob("*.py")
        if path.stem not in ("__init__", "__main__") and not imported_parts(path)
    }


def test_every_import_follows_an_allowed_arrow() -> None:
    shared = leaves()
    wrong: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part in shared:
            continue
        assert part in ALLOWED, f"{path}: a new part; add it to docs/architecture.md and here"
        where = str(path.relative_to(PACKAGE))
        wrong.extend(
            f"{where} imports kelpie.{target}"
            for target in imported_parts(path) - {part} - ALLOWED[part] - shared
        )
        for module in imported_modules(path):
            only = ONLY.get((part, module.split(".")[1]))
            if only is not None and module not in only:
                wrong.append(f"{where} imports {module}")
    assert wrong == []


def test_the_wire_schemas_load_no_database_driver() -> None:
    # The worker and the CLI import kelpie.schemas, which reuses kelpie.store.models' words:
    # that must not load the store's implementations or their drivers.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kelpie.schemas, sys; print([m for m in sys.modules if m.startswith(("
            "'asyncpg', 'aiosqlite', 'kelpie.store.postgres', 'kelpie.store.sqlite'))])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "[]"
