"""A settings class's validation errors as one readable line per problem.

`kelpie serve` and `kelpie worker` are configured from the environment (and flags), so a
problem is named by the variable the user sets (`KELPIE_API_URL: required`), never by
pydantic's field path, error code or documentation link.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_settings import BaseSettings

_MISSING = "missing"


def variable_names(settings_class: type[BaseSettings]) -> dict[str, str]:
    """Each field's environment variable: its alias, or the class's prefix and its name."""
    prefix = str(settings_class.model_config.get("env_prefix") or "")
    names = {}
    for field, info in settings_class.model_fields.items():
        alias = info.validation_alias
        names[field] = alias if isinstance(alias, str) else f"{prefix}{field}".upper()
    return names


def describe_settings_errors(exc: ValidationError, settings_class: type[BaseSettings]) -> list[str]:
    """`NAME: what is wrong`, one line per problem, in the order pydantic found them."""
    names = variable_names(settings_class)
    lines = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        name = names.get(location, location)
        if error["type"] == _MISSING:
            why = "required, not set"
        else:
            why = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        why = " ".join(why.split())
        lines.append(f"{name}: {why}" if name else why)
    return lines
