"""Validation errors in the words of the file a person wrote, not in pydantic's.

pydantic reports `value.dict[str,str].delta: Input should be a valid string`. This module walks
the model along each error's location to find the key the person wrote, collapses the errors of
one union-typed key into one, says what was expected, and suggests the spelling meant for an
unknown key or value. The settings loader and the rules file both use it.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

Path = tuple[str | int, ...]

_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


class ProblemsError(Exception):
    """Problems found in what a person wrote, one a line; `describe` is what a command prints."""

    kind = "input"  # "configuration error", "rules error" …

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)

    def describe(self, program: str = "fasterdata") -> str:
        """One line for one problem; an indented list for several."""
        if len(self.problems) == 1:
            return f"{program}: {self.kind} error: {self.problems[0]}"
        return f"{program}: {self.kind} errors:\n" + "\n".join(f"  {p}" for p in self.problems)


@dataclass(frozen=True)
class Problem:
    """One mistake: where (keys and list indices down to the key written), which key, what is wrong."""

    path: Path
    key: str | None  # the key the message is about; None: the mapping at `path` as a whole
    message: str
    unknown: bool = False  # `key` is not a key of that mapping


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def problems(error: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """The error's items as problems, one per key (a union-typed key's failed alternatives are one)."""
    out: dict[tuple[Path, str | None], Problem] = {}
    for item in sorted(error.errors(), key=lambda i: len(i["loc"])):  # a union's whole value comes first
        problem = _explain(item, model)
        out.setdefault((problem.path, problem.key), problem)
    return list(out.values())


def _explain(item: Any, model: type[BaseModel]) -> Problem:
    loc: tuple[str | int, ...] = tuple(item["loc"])
    path: list[str | int] = []
    current: type[BaseModel] | None = model
    for i, part in enumerate(loc):
        if isinstance(part, int) or current is None:
            path.append(part)
            continue
        fields = current.model_fields
        if part not in fields:
            if item["type"] == "extra_forbidden":
                return Problem(tuple(path), str(part), f"unknown key {part!r}{did_you_mean(part, fields)}", True)
            path.append(part)
            continue
        inner = _model_in(fields[part].annotation)
        if inner is None:  # a plain key: what follows in loc is inside its value
            rest = loc[i + 1:]
            if rest and _is_union(fields[part].annotation):
                what = fields[part].description or "another kind of value"
                return Problem(tuple(path), part, f"expected {_lower(what)}, not {item['input']!r}")
            where = "".join(f" item {p + 1}" if isinstance(p, int) else f".{p}" for p in rest)
            return Problem(tuple(path), part + where, _in_words(item, secret="password" in part))
        path.append(part)
        current = inner
    return Problem(tuple(path), None, _in_words(item, secret=True))


def _in_words(item: Any, secret: bool) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    got = "" if secret else f", not {item.get('input')!r}"
    if kind == "value_error":
        return str(item["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = "" if secret else did_you_mean(item.get("input"), choices)
        return f"must be one of {ctx.get('expected')}{got}{hint}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(name)}{got}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{got}"
    return _lower(str(item["msg"])) + got


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a key's value is (or is a list of), so the walk can go into it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        (arg,) = typing.get_args(annotation) or (None,)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]
