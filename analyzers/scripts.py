"""The Redis scripts, kept as .lua files beside the modules that run them (shipped as package data)."""

from __future__ import annotations

from importlib import resources


def read(name: str, package: str = __package__) -> str:
    """The text of script `name` of `package` (a Lua editor and linter see the files; Python sees this)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")
