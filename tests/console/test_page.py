"""The console page in a real headless chromium shows what Redis holds after a known workload.

Each expectation is read from Redis here, independently of the console's own reads (and the business
total also from SQL over the database), then looked for in what the page renders.
"""

from __future__ import annotations

import json
import urllib.request
from decimal import Decimal
from typing import Any

from selenium.webdriver.support.ui import WebDriverWait

from fasterdata.analyzers import merged
from fasterdata.analyzers.keys import Keys
from fasterdata.console.browser import updated, wait_for_view
from fasterdata.console.proxies import sink_counts
from tests.console.kit import APP, REGION_SALES, STOCK_OF, ConsoleProcess, Shop
from tests.kit.polling import wait_until

CONTROL = ("begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release", "prepare", "deallocate",
           "discard")


def _control(info: dict[str, str]) -> bool:
    return info.get("op") == "txn" or info.get("text", "").split(None, 1)[0].lower() in CONTROL


def leading(shop: Shop, by: str) -> tuple[str, dict[str, int]]:
    """The top fp|db|app member of a sorted set, transaction control left out, and its counters."""
    k = Keys(shop.prefix)
    for member in shop.r.zrevrange(k.stats_top(by), 0, -1):
        if not _control(shop.r.hgetall(k.stats_fp(member.split("|", 1)[0]))):
            return member, {f: int(v) for f, v in shop.r.hgetall(k.stats_q(member)).items()}
    raise AssertionError(f"nothing in {k.stats_top(by)}")


def open_view(driver: Any, console: ConsoleProcess, hash_: str, view: str) -> None:
    """Go to a view and wait until it is drawn anew (a hash change keeps the page and its last drawing)."""
    before = updated(driver) if driver.current_url.startswith(console.url) else "0"
    driver.get(f"{console.url}/#/{hash_}")
    wait_for_view(driver, view, before)


def cells(driver: Any, css: str, attribute: str | None = None) -> list[str]:
    """Texts (or an attribute) of every element `css` selects, read at once: the page redraws as it polls,
    so an element found earlier may be gone by the next call."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(e => arguments[1] ? e.getAttribute(arguments[1]) : e.textContent.trim())", css, attribute)


def click(driver: Any, css: str) -> None:
    driver.execute_script("document.querySelector(arguments[0]).click()", css)


def first_row(driver: Any) -> tuple[str, str]:
    """(data-fp, calls) of the top table's first row, read at once."""
    return tuple(driver.execute_script(
        "const r = document.querySelector('#top-table tbody tr');"
        "return [r.getAttribute('data-fp'), r.querySelector('td.calls').textContent];"))


def test_top_shows_the_leading_statement_and_its_calls(shop: Shop, console: ConsoleProcess, browser: Any) -> None:
    member, q = leading(shop, "time")
    open_view(browser, console, "top", "top")
    assert first_row(browser) == (member.split("|", 1)[0], f"{q['calls']:,}")  # the folded row comes last
    texts = cells(browser, "#top-table tbody td.sql")
    assert not any(t.split(None, 1)[0].upper() in ("BEGIN", "COMMIT") for t in texts)  # folded by default
    assert any(t.startswith("transaction control") for t in texts)


def test_sorting_by_calls_and_unfolding(shop: Shop, console: ConsoleProcess, browser: Any) -> None:
    open_view(browser, console, "top", "top")
    before = updated(browser)
    click(browser, "th[data-sort=calls]")
    wait_for_view(browser, "top", before)
    member, q = leading(shop, "calls")
    fp, calls = first_row(browser)
    assert calls == f"{q['calls']:,}"
    k = Keys(shop.prefix)
    tied = {m.split("|", 1)[0] for m in shop.r.zrangebyscore(k.stats_top("calls"), q["calls"], q["calls"])}
    assert fp in tied and member.split("|", 1)[0] in tied
    before = updated(browser)
    click(browser, "#fold")
    wait_for_view(browser, "top", before)
    assert any(t.split(None, 1)[0].upper() == "COMMIT" for t in cells(browser, "#top-table tbody td.sql"))
    before = updated(browser)
    click(browser, "#fold")  # the state lives in the page: leave it as found


def test_the_app_filter_keeps_only_that_application(shop: Shop, console: ConsoleProcess, browser: Any) -> None:
    open_view(browser, console, "top", "top")
    # the choices are read in the background (every fingerprint's users): there by the next poll at the latest
    WebDriverWait(browser, 20).until(lambda d: APP in cells(d, "#filter-app option"))
    before = updated(browser)
    browser.execute_script("const s = document.getElementById('filter-app'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('change'));", APP)
    wait_for_view(browser, "top", before)
    apps = {t for t in cells(browser, "#top-table tbody tr[data-fp] td:nth-child(3)")}
    assert apps == {APP}
    before = updated(browser)
    browser.execute_script("const s = document.getElementById('filter-app'); s.value = '';"
                           "s.dispatchEvent(new Event('change'));")
    wait_for_view(browser, "top", before)


def with_parameters(shop: Shop) -> tuple[str, list[dict[str, Any]]]:
    """The busiest fingerprint whose recent samples include one with bound parameters, and those samples."""
    k = Keys(shop.prefix)
    for member in shop.r.zrevrange(k.stats_top("time"), 0, -1):
        fp = member.split("|", 1)[0]
        recent = [json.loads(s) for s in shop.r.lrange(k.samples_recent(fp), 0, -1)]
        if any(s.get("params") for s in recent):
            return fp, recent
    raise AssertionError("no fingerprint has a sample with parameters (the workload sends 60 % extended)")


def test_the_fingerprint_page_shows_text_calls_and_sample_parameters(shop: Shop, console: ConsoleProcess,
                                                                     browser: Any) -> None:
    fp, recent = with_parameters(shop)
    k = Keys(shop.prefix)
    open_view(browser, console, f"fp/{fp}", "fp")
    calls = sum(int(shop.r.hget(k.stats_q(f"{fp}|{m}"), "calls") or 0) for m in shop.r.smembers(k.stats_members(fp)))
    assert cells(browser, "#fp-text, #fp-calls") == [shop.r.hget(k.stats_fp(fp), "text"), f"{calls:,}"]
    sample = next(s for s in recent if s.get("params"))
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#samples-recent tbody tr')]"
        ".map(r => [...r.children].map(c => c.textContent))")
    shown = {(row[3], row[4]) for row in rows}
    assert (sample["sql"], sample["params"]) in shown  # its text and parameters as captured (a JSON array)
    assert json.loads(sample["params"])  # real values, not an empty list


def test_business_shows_todays_total_with_its_decimals(shop: Shop, console: ConsoleProcess, browser: Any) -> None:
    open_view(browser, console, "business", "business")
    k = Keys(shop.prefix)
    desc = json.loads(shop.r.hget(k.biz_rules, "sales"))
    days = sorted(merged.biz_days(shop.r, [k], "sales"))
    assert days, "the sales rule wrote nothing"
    values = merged.biz_decimals(shop.r, [k], "sales", days[-1], "sum", desc["scale"])
    total = sum(values.values(), Decimal("0.00"))
    assert total == sum(shop.workload.truth()["sales"].values())  # Redis agrees with SQL
    assert cells(browser, "dd.total[data-rule=sales]") == [f"{total:,}"]
    region, value = max(values.items(), key=lambda x: x[1])
    shown = cells(browser, f"td.value[data-rule=sales][data-key='{region}']")
    assert shown == [f"{value:,}"] and "." in shown[0]  # two decimals, never a scaled integer


def test_the_alert_feed_shows_a_ddl_alert_with_its_evidence(shop: Shop, console: ConsoleProcess,
                                                            browser: Any) -> None:
    k = Keys(shop.prefix)
    alerts = shop.r.xrevrange(k.alerts, count=100)
    ddl = [fields for _, fields in alerts if fields.get("rule") == "ddl"]
    assert ddl, alerts
    open_view(browser, console, "alerts", "alerts")
    evidence = cells(browser, "#alerts tr.alert[data-rule=ddl] td.evidence")
    assert ddl[0]["evidence"].strip() in evidence
    kinds = {fields.get("kind") for _, fields in alerts}
    assert {"security", "new_category", "n_plus_one"} <= kinds, kinds
    for kind, expected in (("anomaly", set()), ("security", {"security"}), ("n_plus_one", {"n_plus_one"}),
                           ("", kinds)):
        before = updated(browser)
        browser.execute_script("const s = document.getElementById('filter-kind');"
                               "s.selectedIndex = [...s.options].findIndex(o => o.value === arguments[0]);"
                               "s.dispatchEvent(new Event('change'));", kind)
        wait_for_view(browser, "alerts", before)
        assert set(cells(browser, "#alerts tr.alert", "data-kind")) == expected, kind  # anomalies are off


def test_the_page_follows_new_work_without_a_reload(shop: Shop, console: ConsoleProcess, browser: Any) -> None:
    member, q = leading(shop, "time")
    open_view(browser, console, "top", "top")
    browser.execute_script("window.__same_page = true")
    shop.workload.run_many(30)
    shop.settle()
    member, q = leading(shop, "time")
    fp = member.split("|", 1)[0]

    def shows_new_calls(driver: Any) -> bool:
        return cells(driver, f"#top-table tbody tr[data-fp='{fp}'] td.calls") == [f"{q['calls']:,}"]

    WebDriverWait(browser, 20).until(shows_new_calls)
    assert browser.execute_script("return window.__same_page === true")


def test_pipeline_and_ledger_views_render(shop: Shop, console: ConsoleProcess, browser: Any) -> None:
    open_view(browser, console, "pipeline", "pipeline")
    k = Keys(shop.prefix)
    streams = cells(browser, "#streams tbody td:first-child")
    assert streams == [k.statements]
    statements, entries_counted = shop.r.hmget(k.held, "statements", "entries")
    length = shop.r.xlen(k.statements)
    held = int(statements) if entries_counted is not None and int(entries_counted) == length else length
    assert held > shop.workload.statements
    WebDriverWait(browser, 20).until(lambda d: cells(d, "#streams tbody td:nth-child(2)") == [f"{held:,}"])
    with urllib.request.urlopen(f"http://127.0.0.1:{shop.proxy.metrics_port}/metrics", timeout=5) as resp:
        sent = sink_counts(resp.read().decode())["sent"]
    row = cells(browser, "#proxies tbody td")
    assert row[:2] == [f"http://127.0.0.1:{shop.proxy.metrics_port}/metrics", f"{int(sent):,}"]
    assert row[4] == "0"  # dropped
    open_view(browser, console, "ledger", "ledger")
    assert "no ledger days cached" in cells(browser, "#view")[0]


def test_the_fingerprint_page_shows_its_plan_or_why_there_is_none(shop: Shop, console: ConsoleProcess,
                                                                  browser: Any) -> None:
    k = Keys(shop.prefix)
    fp = shop.worker.normalize(REGION_SALES.replace("%s", "$1")).fp
    plan = wait_until(lambda: shop.r.hgetall(k.plan(fp)), what="the side connection to explain the SELECT")
    assert plan["status"] == "ok", plan
    open_view(browser, console, f"fp/{fp}", "fp")
    # the console may answer once from what it read before the plan was recorded: the next poll has it
    shown = WebDriverWait(browser, 20).until(lambda d: cells(d, "#plan"))
    assert json.loads(shown[0]) == json.loads(plan["plan"])  # the JSON plan as recorded
    assert "Aggregate" in shown[0]
    update = shop.worker.normalize("UPDATE inventory SET qty = qty - $1 WHERE sku = $2").fp
    refused = wait_until(lambda: shop.r.hgetall(k.plan(update)), what="the UPDATE's plan record")
    assert refused["status"] == "refused", refused  # a write is never explained
    open_view(browser, console, f"fp/{update}", "fp")
    WebDriverWait(browser, 20).until(lambda d: f"refused: {refused['reason']}" in cells(d, "#view .card p.empty"))


def test_the_fingerprint_page_names_the_transactions_it_appears_in(shop: Shop, console: ConsoleProcess,
                                                                   browser: Any) -> None:
    k = Keys(shop.prefix)
    fps = {m.split("|", 1)[0] for m in shop.r.zrange(k.stats_top("time"), 0, -1)}
    with_shapes = sorted(fp for fp in fps if shop.r.scard(k.txshapes_of(fp)))
    assert with_shapes, "the workload's transactions left no shapes"
    fp = with_shapes[0]
    shapes = {s: shop.r.hgetall(k.txshape(s)) for s in shop.r.smembers(k.txshapes_of(fp))}
    open_view(browser, console, f"fp/{fp}", "fp")
    counts = [int(c.replace(",", "")) for c in cells(browser, "#shapes tbody td:nth-child(2)")]
    assert sorted(counts) == sorted(int(s["count"]) for s in shapes.values())
    steps = cells(browser, "#shapes tbody td.sql a", "title")  # the other statements of each shape, by text
    others = {x for s in shapes.values() for x in s["fps"].split(",") if x and x != fp}
    assert set(steps) == {shop.r.hget(k.stats_fp(x), "text") for x in others}


def test_new_categories_and_n_plus_one_are_in_the_feed_with_their_evidence(shop: Shop, console: ConsoleProcess,
                                                                          browser: Any) -> None:
    k = Keys(shop.prefix)
    alerts = [fields for _, fields in shop.r.xrevrange(k.alerts, count=100)]
    open_view(browser, console, "alerts", "alerts")
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#alerts tr.alert')].map(r => [r.dataset.kind, r.dataset.rule,"
        " r.querySelector('td.evidence').textContent])")
    shown = {(kind, rule, evidence) for kind, rule, evidence in rows}
    for kind in ("new_category", "n_plus_one"):
        mine = [a for a in alerts if a.get("kind") == kind]
        assert mine, kind
        assert {(kind, a["rule"], a["evidence"]) for a in mine} <= shown, kind
    regions = [a["value"] for a in alerts if a.get("kind") == "new_category" and a.get("metric") == "sales"]
    assert regions, alerts
    assert sorted(regions) == sorted(set(regions)) and set(regions) <= {"eu", "us", "ap"}, regions  # each new once
    stock = shop.worker.normalize(STOCK_OF.replace("%s", "$1")).fp
    assert any(a.get("fp") == stock for a in alerts if a.get("kind") == "n_plus_one")


def test_the_fingerprint_page_charts_its_last_hour_a_minute_a_point(shop: Shop, console: ConsoleProcess,
                                                                     browser: Any) -> None:
    member, _ = leading(shop, "time")
    fp = member.split("|", 1)[0]
    k = Keys(shop.prefix)
    minutes: dict[int, int] = {}  # minute → calls, from the ring as the workers wrote it (minute:calls:µs:errors)
    for value in shop.r.hvals(k.stats_series(fp)):
        minute, calls, _us, _errors = (int(x) for x in value.split(":"))
        minutes[minute * 60] = minutes.get(minute * 60, 0) + calls
    assert sum(minutes.values()) == sum(int(shop.r.hget(k.stats_q(f"{fp}|{m}"), "calls") or 0)
                                        for m in shop.r.smembers(k.stats_members(fp)))  # within the hour
    open_view(browser, console, f"fp/{fp}", "fp")
    traces = browser.execute_script(
        "return document.getElementById('fp-series').data.map(t => [t.name, t.x.map(x => x.getTime() / 1000), t.y])")
    calls = {name: dict(zip(x, y, strict=True)) for name, x, y in traces}["calls"]
    assert calls == minutes
