"""Build one command's settings from a YAML file < FASTERDATA_* environment < flags.

The YAML file has a top-level section per command (``proxy:``, ``analyze:``, ``gl:``) plus shared
keys (``redis``, ``prefix``, ``log_level`` …) at the top. A problem names where the value came
from: the file and key, the environment variable, or the setting given as a flag.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fasterdata.config.common import ENV_PREFIX, Common, ConfigError
from fasterdata.config.explain import did_you_mean, problems

# Sections a config file may have, one per command with settings of its own.
SECTIONS = ("proxy", "analyze", "gl")

# Settings that existed once: a file still naming one is told what replaced it, not offered a near name.
REMOVED = {
    "capture_mode": "setting 'capture_mode' was removed in favour of `data_plane: native` "
                    "(capture in a helper process is gone; delete the line)",
    "capture_nice": "setting 'capture_nice' was removed with capture_mode (delete the line)",
}


def read_yaml(file: str | Path) -> dict[str, Any]:
    """The file's top-level mapping; a ConfigError when it is unreadable, not YAML or not a mapping."""
    try:
        data = yaml.safe_load(Path(file).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of settings at the top level")
    return data


def load_model(
    model: type[Common],
    section: str,
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Common:
    """`model` from the file's shared keys and `section` < environment < flags (flags equal to None are unset)."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # key → how a message names where its value came from
    if file:
        data = read_yaml(file)
        found = []
        shared = {k: v for k, v in data.items() if k not in SECTIONS}
        for key in shared:
            if key in REMOVED:
                found.append(f"{file}: {REMOVED[key]}")
            elif key not in Common.model_fields:
                found.append(f"{file}: unknown setting {key!r}"
                             f"{did_you_mean(key, [*Common.model_fields, *SECTIONS])}")
        part = data.get(section) or {}
        if not isinstance(part, dict):
            raise ConfigError(*found, f"{file}: section {section!r} must be a mapping")
        values.update((k, v) for k, v in shared.items() if k in Common.model_fields)
        values.update(part)
        origin.update((k, f"{file}: {k}") for k in values)
        try:
            model(**values)
        except ValidationError as exc:
            found += _describe(exc, model, origin, f"{file}")
        if found:
            raise ConfigError(*found)
    env = os.environ if environ is None else environ
    for key in model.model_fields:
        name = ENV_PREFIX + key.upper()
        raw = env.get(name)
        if raw is not None:
            values[key] = _coerce_env(model, key, raw)
            origin[key] = name
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = value
            origin[key] = key
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(*_describe(exc, model, origin, None)) from None


def _coerce_env(model: type[Common], key: str, raw: str) -> Any:
    annotation = model.model_fields[key].annotation
    if annotation is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def _describe(error: ValidationError, model: type[Common], origin: Mapping[str, str],
              file: str | None) -> list[str]:
    lines = []
    whole = f"{file}: " if file else ""
    for p in problems(error, model):
        if p.key is None:  # the settings as a whole (a rule between keys): the input would show secrets
            lines.append(f"{whole}{p.message}")
        elif p.unknown and not p.path and p.key in REMOVED:
            lines.append(f"{whole}{REMOVED[p.key]}")
        elif p.unknown:
            lines.append(f"{whole}{p.message.replace('unknown key', 'unknown setting', 1)}")
        else:
            top = p.key.split(".")[0].split(" ")[0]
            lines.append(f"{origin.get(top, top)}{p.key[len(top):]}: {p.message}")
    return lines
