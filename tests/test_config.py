"""Settings precedence (file < environment < flags) and the errors a person sees for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fasterdata.config.redisurl import one_url_per_host, redacted
from fasterdata.config.settings import Common, ConfigError, ProxySettings, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fasterdata.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load("proxy", environ={})
    assert isinstance(s, ProxySettings)
    assert (s.listen, s.upstream, s.metrics, s.redis) == (
        "127.0.0.1:6432", "127.0.0.1:5432", "127.0.0.1:9930", "redis://127.0.0.1:6379/0")


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    f = write(tmp_path, "prefix: fromfile\nproxy:\n  listen: 127.0.0.1:7000\n  upstream: db:5432\n"
                        "  connect_timeout: 3\n")
    env = {"FASTERDATA_LISTEN": "127.0.0.1:7001", "FASTERDATA_CAPTURE": "false"}
    s = load("proxy", f, {"listen": "127.0.0.1:7002"}, environ=env)
    assert s.listen == "127.0.0.1:7002"
    assert s.upstream == "db:5432" and s.connect_timeout == 3 and s.prefix == "fromfile"
    assert s.capture is False
    assert load("proxy", f, {}, environ=env).listen == "127.0.0.1:7001"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy:\n  listn: 1.2.3.4:5\n", "unknown setting 'listn'"),
        ("colour: blue\n", "unknown setting 'colour'"),
        ("proxy:\n  upstream: nowhere\n", "upstream must be HOST:PORT"),
        ("proxy:\n  connect_timeout: -1\n", "connect_timeout"),
        ("redis: http://x\n", "redis must be a redis://"),
        ("- a\n- b\n", "expected a mapping"),
        ("proxy: [\n", "not valid YAML"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load("proxy", write(tmp_path, text), environ={})


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError, match="max_client_conn"):
        load("proxy", environ={"FASTERDATA_MAX_CLIENT_CONN": "lots"})


def test_cli_reports_config_errors_and_exits_2(tmp_path: Path) -> None:
    f = write(tmp_path, "proxy:\n  listn: x\n")
    run = subprocess.run([sys.executable, "-m", "fasterdata", "proxy", "--config", str(f)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "unknown setting 'listn'" in run.stderr


def test_cli_help_explains_the_proxy() -> None:
    run = subprocess.run([sys.executable, "-m", "fasterdata", "proxy", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    for flag in ("--listen", "--upstream", "--upstream-sslmode", "--tls-cert", "--metrics", "--config"):
        assert flag in run.stdout


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fasterdata", *args], capture_output=True, text=True, timeout=60)


def test_config_check_names_the_problem(tmp_path: Path) -> None:
    bad = cli("config", "check", str(write(tmp_path, "proxy:\n  max_client_conn: lots\n")))
    assert bad.returncode == 2 and "max_client_conn" in bad.stderr
    good = tmp_path / "good.yaml"
    good.write_text("redis: redis://127.0.0.1:6379/0\nproxy:\n  listen: 0.0.0.0:6432\nanalyze:\n  batch: 100\n")
    ok = cli("config", "check", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    f = write(tmp_path, "redis: redis://app:s3cr3t-pw@127.0.0.1:6379/0\ngl:\n  dsn: host=db password=hunter2\n")
    shown = cli("config", "show", "--config", str(f))
    assert shown.returncode == 0, shown.stderr
    assert "s3cr3t-pw" not in shown.stdout and "hunter2" not in shown.stdout
    assert "redis://app:***@127.0.0.1:6379/0" in shown.stdout and "listen: 127.0.0.1:6432" in shown.stdout


def test_readme_reference_is_generated_from_the_model() -> None:
    """The README's configuration reference must be exactly what the model says (regenerate with
    `fasterdata config reference`)."""
    from fasterdata.config.settings import reference_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = readme.index("<!-- config-reference:end -->")
    assert readme[start:end].strip() == reference_markdown().strip()


def test_redis_url_with_several_hosts() -> None:
    """Cluster seed nodes, libpq style: each host keeps the URL's credentials, database and parameters."""
    assert one_url_per_host("redis://:pw@a:7000,[::1]:7001/2?ssl_cert_reqs=none") == [
        "redis://:pw@a:7000/2?ssl_cert_reqs=none", "redis://:pw@[::1]:7001/2?ssl_cert_reqs=none"]
    assert one_url_per_host("rediss://u:p,w@h1,h2") == ["rediss://u:p,w@h1", "rediss://u:p,w@h2"]
    assert one_url_per_host("redis://127.0.0.1:6379/0") == ["redis://127.0.0.1:6379/0"]
    assert one_url_per_host("unix:///run/redis.sock?db=1") == ["unix:///run/redis.sock?db=1"]
    assert Common(redis="redis://a:1,b:2/0").redis == "redis://a:1,b:2/0"
    for bad in ("redis://a,,b/0", "redis://a:1,b:x/0"):
        with pytest.raises(ValidationError):
            Common(redis=bad)


def test_redis_url_redacted() -> None:
    assert redacted("redis://user:secret@a:1,b:2/0") == "redis://user:***@a:1,b:2/0"
    assert redacted("rediss://:secret@h/0?x=1") == "rediss://:***@h/0?x=1"
    assert redacted("redis://user@h/0") == "redis://user@h/0"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"
