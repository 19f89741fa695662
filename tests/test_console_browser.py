"""The console in a real browser: Debian's headless Chromium, driven by Playwright, against the app
served by uvicorn on a small demo world that a simulation has run an A/B test on.

Checks the pages against the API's answers for the same user and moment, follows the links between
pages, uses the form with the keyboard, measures text contrast and the layout at 375 and 1440 px, and
saves screenshots (CONSOLE_SCREENSHOT_DIR, default reports/console-screenshots; `make screenshots`
writes the README's into docs/).
"""

import os
import re
import shutil
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.config import PROJECT_ROOT, Settings
from app.db import make_engine
from app.engine import Recommender
from app.main import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PORTS = range(8100, 8200)  # this project's range on shared machines
SIM_DAYS = 2


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} missing: apt-get install -y chromium chromium-driver (make test does it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed: make install"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true requires the browser: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 8100-8199")


@pytest.fixture(scope="module")
def world(trained, tmp_path_factory):
    """A copy of the trained world on which simulated users ran an A/B test, and its ab-report."""
    from training import data
    from training.abreport import ABConfig, analyse, load_exposures, write_report
    from training.simulate import SimConfig, simulate
    from training.world.model import World

    d = tmp_path_factory.mktemp("console")
    shutil.copy(trained["db_url"].removeprefix("sqlite:///"), d / "w.db")
    url = f"sqlite:///{d / 'w.db'}"
    engine = make_engine(url)
    with engine.connect() as conn:
        _, end = data.data_range(conn)
    app = create_app(Settings(database_url=url, model_dir="unused", log_flush_seconds=0.05),
                     load_recommender=lambda _: Recommender.load(trained["model_dir"]))
    with TestClient(app) as client:
        simulate(engine, client, World.load(trained["world"]), SimConfig(days=SIM_DAYS, users_per_day=60, seed=3))
    first_day = -(-end // 86_400) * 86_400
    config = ABConfig(n_boot=200, min_requests=10)
    with engine.connect() as conn:
        frame, health = load_exposures(conn, first_day, first_day + SIM_DAYS * 86_400, config.window)
    summary = analyse(frame, config, health["catalogue"], health)
    write_report(summary, frame, d / "ab", config)
    engine.dispose()
    moment = datetime.fromtimestamp(first_day + SIM_DAYS * 86_400, tz=UTC).replace(tzinfo=None)
    return {"url": url, "report": d / "ab", "summary": summary, "moment": moment.isoformat(timespec="seconds")}


@pytest.fixture(scope="module")
def server(trained, world):
    """The app on a real port, following the simulated world (the state catches up before tests)."""
    recommender = Recommender.load(trained["model_dir"])
    settings = Settings(database_url=world["url"], model_dir="unused", console_report_dir=world["report"],
                        log_flush_seconds=0.05, state_poll_seconds=0.05)
    app = create_app(settings, load_recommender=lambda _: recommender)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    def caught_up() -> bool:
        serving = getattr(app.state, "serving", None)
        return bool(serving and serving.follower and serving.follower.status.caught_up.is_set())

    while not (srv.started and caught_up()):
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield {"base": f"http://127.0.0.1:{port}", "recommender": recommender, "app": app}
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def shots() -> Path:
    out = Path(os.environ.get("CONSOLE_SCREENSHOT_DIR", PROJECT_ROOT / "reports" / "console-screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


CONTRAST_JS = """() => {
  const parse = c => { const p = c.match(/rgba?\\(([^)]+)\\)/)[1].split(',').map(Number);
                       return p.length > 3 ? p : [...p, 1]; };
  const lum = rgb => { const f = v => { v /= 255;
                                        return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                       return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]); };
  const background = el => { const layers = [];
    for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    let base = [255, 255, 255];
    for (const c of layers.reverse()) base = base.map((v, i) => c[3] * c[i] + (1 - c[3]) * v);
    return base; };
  const bad = []; let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('svg')) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const st = getComputedStyle(el);
    if (st.display === 'none' || st.visibility === 'hidden') continue;
    const a = lum(parse(st.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    checked += 1;
    if (ratio < 4.5) bad.push(el.tagName + ' "' + el.textContent.trim().slice(0, 30) + '" ' + ratio.toFixed(2));
  }
  return {checked, bad};
}"""

UNLABELLED_JS = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
  .map(e => e.name || e.id)"""


def _columns(page) -> dict[str, list[int]]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('ol[data-model]')].map(
        ol => [ol.dataset.model,
               [...ol.querySelectorAll('li[data-post-id]')].map(li => Number(li.dataset.postId))]))""")


def _api(page, base: str, user: int, moment: str, limit: int) -> dict:
    r = page.request.get(f"{base}/post/recommendations/?id={user}&time={moment}&limit={limit}")
    assert r.ok
    return r.json()


def _check_page_basics(page, width: int) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing sticks out sideways
    contrast = page.evaluate(CONTRAST_JS)
    assert contrast["checked"] > 10 and contrast["bad"] == [], contrast["bad"]
    assert page.evaluate(UNLABELLED_JS) == []


def _users_by_group(page, base: str, recommender: Recommender, moment: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for u in recommender.state.snapshot.user_ids[:40]:
        found.setdefault(_api(page, base, int(u), moment, 1)["exp_group"], int(u))
    assert set(found) == {"control", "test"}
    return found


def test_pages_match_the_api_and_link_together(browser, server, world, shots):
    base, recommender, moment = server["base"], server["recommender"], world["moment"]
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    users = _users_by_group(page, base, recommender, moment)
    for group, user in users.items():
        page.goto(f"{base}/console/feed?user={user}&time={moment}&limit=10")
        api = _api(page, base, user, moment, 10)
        columns = _columns(page)
        assert columns[api["model"]] == [p["id"] for p in api["recommendations"]], group  # same posts, same order
        assert page.locator(f'ol[data-model="{api["model"]}"]').locator("xpath=..").locator(".badge").count() == 1
        _check_page_basics(page, 1440)
        control, test = (page.locator(f'ol[data-model="{m}"]').bounding_box() for m in ("control", "test"))
        assert control["y"] == test["y"] and test["x"] > control["x"]  # side by side
    page.screenshot(path=shots / "console-feed.png", full_page=True)

    # a post's "why" link leads to its explanation, which finds the same rank, and back
    user, served = users["test"], "test"
    page.goto(f"{base}/console/feed?user={user}&time={moment}&limit=10")
    first = _columns(page)[served][0]
    page.locator(f'ol[data-model="{served}"] li').first.get_by_role("link", name=re.compile("Why this post")).click()
    page.wait_for_url(re.compile(r"/console/why\?"))
    assert f"post {first} for user {user}" in page.locator("h1").inner_text()
    assert page.locator("#rank").inner_text().startswith("#1 of")
    shap = page.eval_on_selector_all("tr[data-shap]", "rows => rows.map(r => Number(r.dataset.shap))")
    numbers = [float(x) for x in re.findall(r"[+-]\d+\.\d+", page.locator("#score").inner_text())]
    expected_value, raw = numbers[0], numbers[2]
    assert expected_value + sum(shap) == pytest.approx(raw, abs=2e-4)  # the contributions add up to the score
    assert len(shap) == len(recommender.manifest.data["models"][served]["features"])
    _check_page_basics(page, 1440)
    page.screenshot(path=shots / "console-why.png", full_page=True)
    page.get_by_role("link", name=f"Back to user {user}'s feed").click()
    page.wait_for_url(re.compile(r"/console/feed\?"))
    assert _columns(page)[served][0] == first

    # the navigation reaches the other pages, which show the report's and /metrics' numbers
    page.get_by_role("navigation").get_by_role("link", name="Experiment").click()
    page.wait_for_url(re.compile("/console/experiment"))
    summary = world["summary"]
    assert summary["verdict"] in page.locator("#verdict").inner_text()
    for g in ("control", "test"):
        cells = page.locator(f'tr[data-group="{g}"] td').all_inner_texts()
        assert int(cells[1]) == summary["groups"][g]["requests"] and float(cells[2]) == summary["groups"][g]["hitrate"]
    assert page.locator("#cumulative circle").count() == len(summary["daily"])
    assert page.locator("img").count() == 2 and all(page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"))
    _check_page_basics(page, 1440)
    page.screenshot(path=shots / "console-experiment.png", full_page=True)

    page.get_by_role("navigation").get_by_role("link", name="Service").click()
    page.wait_for_url(re.compile("/console/service"))
    assert page.locator("#version").inner_text() == recommender.version
    metrics = page.request.get(f"{base}/metrics").text()
    served_total = sum(float(v) for v in re.findall(r"^recommendations_total\{[^}]*\} (\S+)$", metrics, re.M))
    row = page.locator('tr[data-endpoint="/post/recommendations/"] td').all_inner_texts()
    assert int(row[0]) == served_total  # the console's own rankings are not counted as served
    _check_page_basics(page, 1440)
    page.screenshot(path=shots / "console-service.png", full_page=True)
    page.close()


def test_narrow_screen(browser, server, world, shots):
    base, moment = server["base"], world["moment"]
    user = int(server["recommender"].state.snapshot.user_ids[1])
    page = browser.new_page(viewport={"width": 375, "height": 800})
    for path in (f"/console/feed?user={user}&time={moment}&limit=5",
                 f"/console/why?user={user}&post={_columns_of(page, base, user, moment)}&time={moment}",
                 "/console/experiment", "/console/service"):
        page.goto(base + path)
        _check_page_basics(page, 375)
    page.goto(f"{base}/console/feed?user={user}&time={moment}&limit=5")
    control, test = (page.locator(f'ol[data-model="{m}"]').bounding_box() for m in ("control", "test"))
    assert test["y"] >= control["y"] + control["height"]  # stacked, not squeezed
    page.screenshot(path=shots / "console-feed-375.png", full_page=True)
    page.close()


def _columns_of(page, base: str, user: int, moment: str) -> int:
    return _api(page, base, user, moment, 1)["recommendations"][0]["id"]


def test_keyboard_only(browser, server, world):
    """Tab to the labelled user field, type, press Enter: the feed opens; the focus is visible."""
    base, recommender = server["base"], server["recommender"]
    user = int(recommender.state.snapshot.user_ids[2])
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{base}/console/feed")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "user":
            break
    assert page.evaluate("document.activeElement.id") == "user"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    assert page.evaluate("document.activeElement.labels[0].textContent") == "User id"
    page.keyboard.type(str(user))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"user={user}"))
    moment = page.input_value("#time")
    api = _api(page, base, user, moment, 10)
    assert _columns(page)[api["model"]] == [p["id"] for p in api["recommendations"]]
    # the first link of the page is the skip link, and it moves the focus to the content
    page.keyboard.press("Control+Home")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.close()
