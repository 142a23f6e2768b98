"""The README's Python examples run as pasted: every name they use is imported or defined,
except the few a reader fills in (their secret, their token, their storage)."""

from __future__ import annotations

import builtins
import re
import symtable
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
# Left to the reader on purpose, each explained next to the example.
PLACEHOLDERS = {"WEBHOOK_SECRET", "WEBHOOK_TOKEN", "store_once"}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def undefined_names(source: str) -> set[str]:
    """Global names the code reads but neither imports nor assigns."""
    module = symtable.symtable(source, "README.md", "exec")
    defined = {
        symbol.get_name()
        for symbol in module.get_symbols()
        if symbol.is_assigned() or symbol.is_imported() or symbol.is_namespace()
    }
    used: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            is_global = table.get_type() == "module" or symbol.is_global()
            if symbol.is_referenced() and is_global:
                used.add(symbol.get_name())
        for child in table.get_children():
            visit(child)

    visit(module)
    return used - defined - set(dir(builtins))


def test_readme_python_examples_import_what_they_use() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    for block in blocks:
        assert undefined_names(block) <= PLACEHOLDERS, block
