"""The settings of every command, found by the command's name: the one registry of models.

Each model lives in a module of its own (proxy_settings.py, analyzer_settings.py, gl_settings.py)
that builds on common.py and knows nothing of the others; this module imports them all, so asking
for a command's settings needs no import to have happened first. Values come from a YAML file <
FASTERDATA_* environment < CLI flags (loader.py); an unknown key or a bad value stops start-up with
a message that names the key and says what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.config.common import (
    ENV_PREFIX,
    Common,
    ConfigError,
    Served,
    add_common_arguments,
    add_metrics_access_arguments,
    split_hostport,
)
from fasterdata.config.gl_settings import GLSettings
from fasterdata.config.loader import SECTIONS, load_model
from fasterdata.config.proxy_settings import ProxySettings

__all__ = ["COMMANDS", "SECTIONS", "Common", "ConfigError", "ProxySettings", "Served", "add_common_arguments",
           "add_metrics_access_arguments", "effective", "load", "mask", "model_for", "reference_markdown",
           "split_hostport"]

COMMANDS: dict[str, type[Common]] = {"proxy": ProxySettings, "analyze": AnalyzerSettings, "gl": GLSettings}
assert tuple(COMMANDS) == SECTIONS, "every command with settings has its section of the config file"

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def model_for(command: str) -> type[Common]:
    try:
        return COMMANDS[command]
    except KeyError:
        raise ConfigError(f"no settings for command {command!r}") from None


def load(
    command: str,
    file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Common:
    """Build the command's settings from file < environment < flags (flags equal to None are unset)."""
    return load_model(model_for(command), command, file, flags, environ)


_SECRET_IN_URL = re.compile(r"(://[^:/@]*:)([^@]+)(@)")
_SECRET_IN_DSN = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask(value: Any) -> Any:
    """Hide passwords inside URLs and DSNs, so `config show` output can be pasted anywhere."""
    if not isinstance(value, str):
        return value
    return _SECRET_IN_DSN.sub(r"\1***", _SECRET_IN_URL.sub(r"\1***\3", value))


def effective(file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every command's settings as they would be in force (no flags), secrets masked."""
    out: dict[str, dict[str, Any]] = {}
    for command in SECTIONS:
        settings = load(command, file, environ=environ)
        out[command] = {k: "***" if v is not None and "password" in k else mask(v)
                        for k, v in settings.model_dump().items()}
    return out


def reference_markdown() -> str:
    """The README's configuration reference, generated from the models so it cannot drift."""
    lines: list[str] = []
    for command in SECTIONS:
        model = model_for(command)
        lines += [f"### `{command}`", "", "| key | environment | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, str) and default.startswith(_PACKAGE_DIR):
                default = "config" + default[len(_PACKAGE_DIR):] + " (shipped)"  # not this checkout's path
            if default is None or default == [] or default == "":
                shown = "(none)"
            else:
                shown = f"`{default}`" if isinstance(default, str) else f"`{default!r}`"
            lines.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)
