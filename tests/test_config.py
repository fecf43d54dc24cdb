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
        ("proxy:\n  upstream: nowhere\n", "upstream: must be HOST:PORT"),
        ("proxy:\n  connect_timeout: -1\n", "connect_timeout"),
        ("redis: http://x\n", "redis: must be a redis://"),
        ("- a\n- b\n", "expected a mapping"),
        ("proxy: [\n", "not valid YAML"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load("proxy", write(tmp_path, text), environ={})


def test_bad_environment_value_names_the_variable() -> None:
    """The person set FASTERDATA_WORKERS, not `workers`: the message names what they wrote."""
    with pytest.raises(ConfigError) as caught:
        load("proxy", environ={"FASTERDATA_WORKERS": "abc"})
    assert caught.value.problems == ["FASTERDATA_WORKERS: expected a whole number, not 'abc'"]
    with pytest.raises(ConfigError, match="FASTERDATA_MAX_CLIENT_CONN: expected a whole number"):
        load("proxy", environ={"FASTERDATA_MAX_CLIENT_CONN": "lots"})


def test_a_redact_columns_regex_that_does_not_compile_stops_start_up() -> None:
    """Caught with the settings, not later as every session's capture failing on re.error."""
    with pytest.raises(ConfigError) as caught:
        load("proxy", environ={"FASTERDATA_REDACT_COLUMNS": "pass("})
    (problem,) = caught.value.problems
    assert problem.startswith("FASTERDATA_REDACT_COLUMNS: is not a valid regular expression")


def test_bad_port_is_said_once_on_one_line() -> None:
    """`--listen 127.0.0.1:99999` gets one line that names the setting and the value once each."""
    run = cli("proxy", "--listen", "127.0.0.1:99999")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "fasterdata: configuration error: listen: port 99999 is out of range (0 to 65535) in '127.0.0.1:99999'"]


def test_unknown_setting_suggests_the_spelling_meant(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'listn' \(did you mean 'listen'\?\)"):
        load("proxy", write(tmp_path, "proxy:\n  listn: 1.2.3.4:5\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown setting 'prefx' \(did you mean 'prefix'\?\)"):
        load("proxy", write(tmp_path, "prefx: x\n"), environ={})


def test_a_removed_setting_says_what_replaced_it(tmp_path: Path) -> None:
    """capture_mode is gone: the line names it and data_plane: native, instead of guessing a near name."""
    with pytest.raises(ConfigError) as caught:
        load("proxy", write(tmp_path, "proxy:\n  capture_mode: process\n"), environ={})
    assert [p.split(": ", 1)[1] for p in caught.value.problems] == [
        "setting 'capture_mode' was removed in favour of `data_plane: native` "
        "(capture in a helper process is gone; delete the line)"]


def test_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    f = write(tmp_path, "colour: blue\nproxy:\n  workers: many\n  log_level: loud\n")
    with pytest.raises(ConfigError) as caught:
        load("proxy", f, environ={})
    assert [p.split(": ", 1)[1] for p in caught.value.problems] == [
        "unknown setting 'colour'",
        "log_level: must be one of 'debug', 'info', 'warning' or 'error', not 'loud'",
        "workers: expected a whole number, not 'many'"]


def test_models_import_without_the_registry() -> None:
    """Each command's model stands alone; the registry (settings.py) imports them, never the reverse, and
    knows every command without an import having happened first."""
    code = ("import sys\n"
            "import fasterdata.config.proxy_settings, fasterdata.config.analyzer_settings, "
            "fasterdata.config.gl_settings\n"
            "assert 'fasterdata.config.settings' not in sys.modules, 'a model imports the registry'\n"
            "from fasterdata.config import settings\n"
            "print(sorted(settings.COMMANDS), [settings.load(c, environ={}).__class__.__name__ "
            "for c in settings.SECTIONS])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['analyze', 'gl', 'proxy'] ['ProxySettings', 'AnalyzerSettings', 'GLSettings']"


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
    f = write(tmp_path, "redis: redis://app:s3cr3t-pw@127.0.0.1:6379/0\ngl:\n  dsn: host=db password=hunter2\n"
                        "analyze:\n  metrics_user: scraper\n  metrics_password: scrape-pw\n")
    shown = cli("config", "show", "--config", str(f))
    assert shown.returncode == 0, shown.stderr
    assert "s3cr3t-pw" not in shown.stdout and "hunter2" not in shown.stdout and "scrape-pw" not in shown.stdout
    assert "metrics_user: scraper" in shown.stdout
    assert "redis://app:***@127.0.0.1:6379/0" in shown.stdout and "listen: 127.0.0.1:6432" in shown.stdout


RULES_WITH_TWO_MISTAKES = """\
rules:
  - name: orders_placed
    table: orders
    operation: upsert
    aggregat: sum
"""


def test_config_check_checks_the_rules_file_a_settings_file_names(tmp_path: Path) -> None:
    """`analyze` would refuse to start on this rules file, so `config check` of the settings must not say ok."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_WITH_TWO_MISTAKES)
    settings = write(tmp_path, f"analyze:\n  rules: {rules}\n")
    run = cli("config", "check", str(settings))
    assert run.returncode == 2, run.stdout
    assert run.stderr.splitlines() == [
        f"{rules}: rule 'orders_placed': operation: must be one of 'insert', 'update', 'delete', 'copy' or "
        "'select', not 'upsert' (did you mean 'insert'?)",
        f"{rules}: rule 'orders_placed': unknown key 'aggregat' (did you mean 'aggregate'?)"]
    rules.write_text("rules:\n  - {name: orders_placed, table: orders, operation: insert, aggregate: sum}\n")
    run = cli("config", "check", str(settings))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{settings}: ok", f"{rules}: ok (rules)"]


def test_config_check_of_settings_and_rules_problems_together(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_WITH_TWO_MISTAKES)
    settings = write(tmp_path, f"proxy:\n  workers: many\nanalyze:\n  rules: {rules}\n  batch: 0\n")
    run = cli("config", "check", str(settings))
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert lines[:2] == [f"{settings}: workers: expected a whole number, not 'many'",
                         f"{settings}: batch: must be at least 1, not 0"]
    assert len(lines) == 4 and all(line.startswith(f"{rules}: rule 'orders_placed': ") for line in lines[2:])
    missing = write(tmp_path, "analyze:\n  rules: /nonexistent/rules.yaml\n")
    run = cli("config", "check", str(missing))
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["cannot read rules file /nonexistent/rules.yaml: No such file or directory"]


def test_config_check_of_a_rules_file(tmp_path: Path) -> None:
    """A rules file is known by its top-level rules: (not 'unknown setting rules')."""
    shipped = Path(__file__).resolve().parents[1] / "config" / "rules.yaml"
    run = cli("config", "check", str(shipped))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{shipped}: ok (rules)"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_WITH_TWO_MISTAKES)
    run = cli("config", "check", str(rules))
    assert run.returncode == 2
    assert "unknown setting" not in run.stderr and len(run.stderr.splitlines()) == 2
    assert "(did you mean 'aggregate'?)" in run.stderr


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
