"""The sink's Lua script (append.lua, shipped beside this module), read once at import."""

from __future__ import annotations

import hashlib
from importlib import resources

SCRIPT = resources.files(__package__).joinpath("append.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
