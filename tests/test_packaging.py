"""The built wheel installs one import namespace, `fasterdata`, and nothing beside it.

Generic names such as `config` or `proxy` in site-packages would shadow an application's own modules, so
the wheel is built and installed into a fresh venv, and imported from a folder that is not the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (built,) = out.glob("fasterdata-*.whl")
    return built


def test_the_wheel_holds_only_the_fasterdata_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops - {"fasterdata"} == {t for t in tops if t.endswith(".dist-info")}, sorted(tops)
    for part in ("proxy", "analyzers", "analyzers/glcache", "config", "demo"):
        assert f"fasterdata/{part}/__init__.py" in names
    assert "fasterdata/config/rules.yaml" in names  # package data travels with its package
    for script in ("commit.lua", "claim_floor.lua", "evict.lua", "evict_entries.lua"):
        assert f"fasterdata/analyzers/{script}" in names  # the analyzers' Redis scripts
    assert "fasterdata/proxy/sink/__init__.py" in names
    assert "fasterdata/proxy/sink/append.lua" in names  # the sink's script, read beside its module
    for script in ("append_patch.lua", "release_lock.lua", "renew_lock.lua"):  # the ledger cache's
        assert f"fasterdata/analyzers/glcache/{script}" in names
    assert "fasterdata/console/__init__.py" in names
    for page in ("index.html", "console.js", "console.css"):  # the console's page, served from the package
        assert f"fasterdata/console/static/{page}" in names
    assert not [n for n in names if n.endswith("plotly.min.js")]  # served from the plotly package, not copied


def test_the_installed_wheel_imports_as_fasterdata_only(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # The dependencies come from the test run's own site-packages, added by PYTHONPATH, where .pth files
    # (the checkout's editable install among them) are not read.
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": deps}
    probe = (
        "import importlib.util, fasterdata.proxy, fasterdata.analyzers.worker, fasterdata.config.settings\n"
        "import fasterdata.cli, fasterdata.proxy.sink\n"
        "assert 'XADD' in fasterdata.proxy.sink.SCRIPT  # append.lua, read from the installed package\n"
        "import importlib.resources as res, fasterdata.console.routes\n"
        "assert 'console.js' in (res.files('fasterdata.console') / 'static' / 'index.html').read_text()\n"
        "print(fasterdata.proxy.__file__)\n"
        "print([n for n in ('config', 'proxy', 'analyzers') if importlib.util.find_spec(n)])\n"
    )
    done = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    where, shadows = done.stdout.splitlines()
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout
    assert shadows == "[]"
    failed = subprocess.run([str(python), "-c", "import config"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode != 0 and "No module named 'config'" in failed.stderr
    cli = subprocess.run([str(venv / "bin" / "fasterdata"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "proxy" in cli.stdout, cli.stderr
