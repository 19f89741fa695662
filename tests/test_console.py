"""The console without a browser: its pages show what the API and the engine answer, bad input is a
4xx page naming the field, nothing is written to the database, and a setting turns it off."""

import doctest
import json
import math
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, insert

import app.console.experiment
import app.console.service
from app import columns as c
from app.config import Settings
from app.console.experiment import cumulative_difference, load_report
from app.console.explain import explain, served_row
from app.console.feed import build_feed, epoch
from app.db import create_course_tables, make_engine
from app.engine import Recommender
from app.features import assemble
from app.main import create_app
from app.queries import count_topics_before, read_actions_before
from app.tables import feed_data, post_text_df, user_data

MOMENT = "2021-12-24T12:00:00"


class Rankings(HTMLParser):
    """Post ids of each `ol[data-model]`, in page order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.columns: dict[str, list[int]] = {}
        self._model: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "ol" and "data-model" in a:
            self._model = a["data-model"]
            self.columns[self._model] = []
        elif tag == "li" and self._model and "data-post-id" in a:
            self.columns[self._model].append(int(a["data-post-id"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "ol":
            self._model = None


@pytest.fixture(scope="module")
def recommender(trained) -> Recommender:
    return Recommender.load(trained["model_dir"])


def _client(trained, recommender, **settings) -> TestClient:
    settings.setdefault("state_follow", False)  # the shared world must not move under other tests
    s = Settings(database_url=trained["db_url"], model_dir="unused", log_flush_seconds=0.05, **settings)
    return TestClient(create_app(s, load_recommender=lambda _: recommender))


@pytest.fixture(scope="module")
def client(trained, recommender):
    with _client(trained, recommender) as cl:
        yield cl


def _users_by_group(client, recommender) -> dict[str, int]:
    found: dict[str, int] = {}
    for u in recommender.state.snapshot.user_ids[:40]:
        body = client.get("/post/recommendations/", params={"id": int(u), "time": MOMENT, "limit": 1}).json()
        found.setdefault(body["exp_group"], int(u))
    assert set(found) == {"control", "test"}
    return found


def test_doctests():
    for module in (app.console.service, app.console.experiment):
        assert doctest.testmod(module).failed == 0


def test_feed_shows_the_api_answer_for_both_groups(client, recommender):
    for group, user in _users_by_group(client, recommender).items():
        api = client.get("/post/recommendations/", params={"id": user, "time": MOMENT, "limit": 8}).json()
        page = client.get("/console/feed", params={"user": user, "time": MOMENT, "limit": 8})
        assert page.status_code == 200
        columns = Rankings(page.text).columns
        assert set(columns) == {"control", "test"}
        assert columns[api["model"]] == [p["id"] for p in api["recommendations"]]  # same posts, same order
        other = "test" if api["model"] == "control" else "control"
        ts = int(datetime.fromisoformat(MOMENT).replace(tzinfo=UTC).timestamp())
        assert columns[other] == recommender.recommend(other, user, ts, 8).post_ids.tolist()
        assert f"A/B group <strong>{group}</strong>" in page.text


def test_feed_scores_agreement_and_history(trained, recommender):
    settings = Settings(database_url=trained["db_url"], model_dir="unused")
    engine = make_engine(trained["db_url"])
    user = int(recommender.state.snapshot.user_ids[3])
    moment = datetime(2021, 12, 24, 12)
    page = build_feed(recommender, engine, settings, user, moment, 20)
    ts = epoch(moment)
    for col in page.columns:
        scores, _ = recommender.scores(col.model, user, ts)
        rows = recommender.state.post_rows(np.array([p.id for p in col.posts]))
        assert [p.score for p in col.posts] == pytest.approx(scores[rows].tolist())
        assert all(0 < p.probability < 1 for p in col.posts)
        assert [p.probability for p in col.posts] == sorted((p.probability for p in col.posts), reverse=True)
    control, test = ({p.id: p.rank for p in col.posts} for col in page.columns)
    assert page.agreed == [p for p in control if p in test]
    for p in page.columns[0].posts:
        assert p.rank_elsewhere == ({"test": test[p.id]} if p.id in test else {})
    with engine.connect() as conn:
        assert [h.post_id for h in page.liked] == [r[c.POST_ID] for r in read_actions_before(
            conn, user, moment, c.LIKE, 10)]
    assert all(h.time < moment for h in page.liked + page.viewed)
    assert sum(t.views for t in page.mix) == page.totals["views"] > 0
    assert sum(t.view_share for t in page.mix) == pytest.approx(1.0)
    engine.dispose()


def test_history_queries_by_hand(db_url):
    """Strictly before the moment, latest first; topic counts per action — on SQLite and PostgreSQL."""
    engine = make_engine(db_url)
    create_course_tables(engine)
    t = datetime(2021, 10, 2, 10)
    with engine.begin() as conn:
        conn.execute(insert(user_data), [{c.USER_ID: 1, c.GENDER: 1, c.AGE: 30, c.COUNTRY: "Russia",
                                          c.CITY: "Moscow", c.EXP_GROUP: 2, c.OS: "iOS", c.SOURCE: "ads"}])
        conn.execute(insert(post_text_df), [{c.POST_ID: 10, c.TEXT: "a", c.TOPIC: "tech"},
                                            {c.POST_ID: 11, c.TEXT: "b", c.TOPIC: "sport"}])
        conn.execute(insert(feed_data), [
            {c.TIMESTAMP: t, c.USER_ID: 1, c.POST_ID: 10, c.ACTION: c.VIEW, c.TARGET: 1},
            {c.TIMESTAMP: t.replace(second=30), c.USER_ID: 1, c.POST_ID: 10, c.ACTION: c.LIKE, c.TARGET: None},
            {c.TIMESTAMP: t.replace(minute=5), c.USER_ID: 1, c.POST_ID: 11, c.ACTION: c.VIEW, c.TARGET: 0},
            {c.TIMESTAMP: t.replace(hour=12), c.USER_ID: 1, c.POST_ID: 11, c.ACTION: c.VIEW, c.TARGET: 0},
        ])
    with engine.connect() as conn:
        before = t.replace(hour=12)  # the view at 12:00 itself is not before 12:00
        assert [r[c.POST_ID] for r in read_actions_before(conn, 1, before, c.VIEW, 10)] == [11, 10]
        assert [r[c.POST_ID] for r in read_actions_before(conn, 1, before, c.VIEW, 1)] == [11]
        assert [r[c.POST_ID] for r in read_actions_before(conn, 1, t.replace(second=30), c.LIKE, 10)] == []
        assert count_topics_before(conn, 1, before) == {"tech": {"view": 1, "like": 1}, "sport": {"view": 1}}
        assert count_topics_before(conn, 2**40, before) == {}
    engine.dispose()


def test_why_explains_the_served_row(recommender):
    user = int(recommender.state.snapshot.user_ids[5])
    ts = epoch(datetime(2021, 12, 24, 12))
    for model in ("control", "test"):
        top = recommender.recommend(model, user, ts, 3).post_ids.tolist()
        for rank, post in enumerate(top, start=1):
            x = served_row(recommender, model, user, post, ts)
            row, posts = recommender.state.at(recommender.state.user_row(user), ts)
            full = assemble(row.view, np.int64(0), posts, None, np.int64(ts), text=model == "test")
            prow = int(recommender.state.post_rows(np.array([post]))[0])
            np.testing.assert_array_equal(x[0], full[prow])  # the very row the ranking scored
            r = explain(recommender, model, user, post, ts)
            raw = recommender.models[model].predict(x, prediction_type="RawFormulaVal")[0]
            assert r.raw_score == pytest.approx(raw, abs=1e-5)  # SHAP values add up to the score
            assert r.expected_value + sum(ct.shap for ct in r.contributions) == pytest.approx(raw, abs=1e-5)
            shaps = [abs(ct.shap) for ct in r.contributions]
            assert shaps == sorted(shaps, reverse=True)
            assert r.rank == rank


def test_why_page_and_links(client, recommender):
    user = int(recommender.state.snapshot.user_ids[5])
    feed = client.get("/console/feed", params={"user": user, "time": MOMENT, "limit": 3}).text
    links = re.findall(r'href="(/console/why\?[^"]+)"', feed)
    assert len(links) == 6  # one per post and model
    page = client.get(links[0].replace("&amp;", "&"))
    assert page.status_code == 200 and 'id="contributions"' in page.text and "#1 of" in page.text
    assert "/console/why" in client.get("/console/why").text  # the form alone
    for group, user in _users_by_group(client, recommender).items():  # no model named: the user's own
        page = client.get("/console/why", params={"user": user, "post": int(recommender.post_ids[0]), "time": MOMENT})
        assert f'<option value="{group}" selected>' in page.text


@pytest.mark.parametrize(("path", "field"), [
    ("/console/feed?user=abc", "user"), ("/console/feed?user=1&limit=0", "limit"),
    ("/console/feed?user=1&limit=101", "limit"), ("/console/feed?user=1&time=yesterday", "time"),
    ("/console/feed?user=-4", "user"), (f"/console/feed?user={2**64}", "user"),
    ("/console/why?user=1&post=x", "post"), ("/console/why?user=1&post=2&model=popular", "model"),
    ("/console/feed?user=1&time=0001-01-01T00:00:00%2B01:00", "time"),
    ("/console/why?user=1&post=2&time=9999-12-31T23:59:59-01:00", "time"),
])
def test_bad_input_is_a_422_page_naming_the_field(client, path, field):
    r = client.get(path)
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert f"<strong>{field}</strong>" in r.text


def test_unknown_ids(client, recommender):
    r = client.get("/console/why", params={"user": 10**12, "post": 1, "time": MOMENT})
    assert r.status_code == 404 and "<strong>user</strong>" in r.text
    user = int(recommender.state.snapshot.user_ids[0])
    r = client.get("/console/why", params={"user": user, "post": 10**9, "time": MOMENT})
    assert r.status_code == 404 and "<strong>post</strong>" in r.text
    page = client.get("/console/feed", params={"user": 10**12, "time": MOMENT, "limit": 3})
    assert page.status_code == 200 and "unknown to the state" in page.text
    api = client.get("/post/recommendations/", params={"id": 10**12, "time": MOMENT, "limit": 3}).json()
    assert Rankings(page.text).columns["control"] == [p["id"] for p in api["recommendations"]]


def test_blank_fields_and_random_user(client, recommender):
    assert client.get("/console/feed?user=&time=&limit=").status_code == 200
    r = client.get("/console/feed/random", params={"time": MOMENT}, follow_redirects=False)
    assert r.status_code == 303
    user = int(re.search(r"user=(\d+)", r.headers["location"]).group(1))
    assert recommender.knows(user)
    assert client.get(r.headers["location"]).status_code == 200


def test_console_writes_nothing(trained, recommender):
    """Every statement the console sends is a read (BEGIN: the SQLite engine opens its transactions
    explicitly, app.db); no exposure is logged for its rankings."""
    with _client(trained, recommender) as cl:
        statements: list[str] = []
        event.listen(cl.app.state.db, "before_cursor_execute",
                     lambda conn, cursor, stmt, *a: statements.append(stmt))
        user = int(recommender.state.snapshot.user_ids[2])
        for path in ("/console/feed", "/console/why", "/console/experiment", "/console/service"):
            assert cl.get(path, params={"user": user, "post": int(recommender.post_ids[0]), "time": MOMENT}
                          ).status_code == 200
        assert cl.app.state.writer.written == 0 and cl.app.state.writer.depth == 0
    reads = ("SELECT", "PRAGMA", "BEGIN")
    assert statements and all(s.lstrip().upper().startswith(reads) for s in statements), statements


def test_setting_turns_the_console_off(trained, recommender):
    with _client(trained, recommender, console_enabled=False) as cl:
        assert cl.get("/console/feed").status_code == 404
        assert cl.get("/console/static/console.css").status_code == 404
        assert cl.get("/health").status_code == 200
        assert cl.get("/console/feed?user=abc").headers["content-type"].startswith("application/json")


def test_static_assets_are_served(client):
    r = client.get("/console/static/console.css")
    assert r.status_code == 200 and "contrast" in r.text
    for path in ("/console/feed", "/console/experiment", "/console/service"):
        html = client.get(path).text
        assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # no CDN


def _report(tmp_path, frame):
    from training.abreport import ABConfig, analyse, write_report

    config = ABConfig(n_boot=100)
    summary = analyse(frame, config, None, {})
    write_report(summary, frame, tmp_path, config)
    return summary


def test_experiment_page_shows_the_report(trained, recommender, tmp_path):
    from tests.test_abreport import synthetic

    frame = synthetic(5, users=900, rate_test=0.36)
    summary = _report(tmp_path, frame)
    report = load_report(tmp_path)
    last = report.cumulative[-1]  # the cumulative difference after the last day is the overall one
    assert last.difference == pytest.approx(summary["groups"]["test"]["hitrate"] - summary["groups"]["control"][
        "hitrate"], abs=1e-4)
    assert last.low < summary["difference"]["estimate"] < last.high
    with _client(trained, recommender, console_report_dir=tmp_path) as cl:
        page = cl.get("/console/experiment").text
        assert summary["verdict"] in page and 'id="cumulative"' in page
        for g in ("control", "test"):
            assert f"<td class=\"num\">{summary['groups'][g]['requests']}</td>" in page
            lo, hi = summary["groups"][g]["hitrate_ci"]
            assert f"[{lo}, {hi}]" in page
        assert f"{summary['srm_p_value']:.3g}" in page
        assert cl.get("/console/experiment/plots/daily_hitrate.png").headers["content-type"] == "image/png"
        assert cl.get("/console/experiment/plots/..%2Fsummary.json").status_code == 404
        assert cl.get("/console/experiment/plots/summary.json").status_code == 404


def test_experiment_window_of_days(trained, recommender, tmp_path):
    """The whole span gives the report's own counts; one day gives that day's; bad days are a 422."""
    from tests.test_abreport import synthetic

    summary = _report(tmp_path, synthetic(6, users=600))
    days = [d["day"] for d in summary["daily"]]
    with _client(trained, recommender, console_report_dir=tmp_path) as cl:
        page = cl.get("/console/experiment", params={"first": days[0], "last": days[-1]}).text
        for g in ("control", "test"):
            row = re.search(rf'<tr data-group="{g}"><th scope="row">{g}</th><td class="num">(\d+)</td>\s*'
                            r'<td class="num">([\d.]+)</td>', page.split('id="window"')[1])
            assert int(row.group(1)) == summary["groups"][g]["requests"]
            assert float(row.group(2)) == pytest.approx(summary["groups"][g]["hitrate"], abs=1e-4)
        one = cl.get("/console/experiment", params={"first": days[1], "last": days[1]}).text.split('id="window"')[1]
        assert f'<td class="num">{summary["daily"][1]["control"]["requests"]}</td>' in one
        for params, field in [({"first": "1999-01-01"}, "first"), ({"last": "soon"}, "last"),
                              ({"first": days[-1], "last": days[0]}, "last")]:
            r = cl.get("/console/experiment", params=params)
            assert r.status_code == 422 and f"<strong>{field}</strong>" in r.text


def test_experiment_page_without_a_report(trained, recommender, tmp_path):
    with _client(trained, recommender, console_report_dir=tmp_path / "none") as cl:
        r = cl.get("/console/experiment")
        assert r.status_code == 200 and "ab-report --out" in r.text
    (tmp_path / "summary.json").write_text("{not json")
    with _client(trained, recommender, console_report_dir=tmp_path) as cl:
        assert "unreadable" in cl.get("/console/experiment").text
    (tmp_path / "summary.json").write_text(json.dumps({"verdict": "x", "groups": {"control": {}}}))
    with pytest.raises(ValueError, match="no srm_p_value, users_in_both_groups, groups.control.users"):
        load_report(tmp_path)
    with _client(trained, recommender, console_report_dir=tmp_path) as cl:
        r = cl.get("/console/experiment")
        assert r.status_code == 200 and "not an ab-report summary" in r.text


def test_cumulative_difference_by_hand():
    days = [{"day": "a", "control": {"requests": 10, "hits": 5}, "test": {"requests": 0, "hits": 0}},
            {"day": "b", "control": {"requests": 10, "hits": 3}, "test": {"requests": 20, "hits": 12}}]
    pts = cumulative_difference(days, design_effect=2.0)
    assert [p.day for p in pts] == ["b"]  # no test request yet on day a
    half = 1.959964 * math.sqrt(2.0 * (0.4 * 0.6 / 20 + 0.6 * 0.4 / 20))
    assert pts[0].difference == pytest.approx(0.2) and pts[0].high - pts[0].difference == pytest.approx(half)


def _metric(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_service_page_shows_the_metrics_numbers(trained, recommender):
    with _client(trained, recommender) as cl:
        users = recommender.state.snapshot.user_ids[:7]
        for u in users:
            cl.get("/post/recommendations/", params={"id": int(u), "time": MOMENT})
        assert cl.app.state.writer.wait_until_empty()  # so that the page and /metrics see the same count
        page = cl.get("/console/service").text
        metrics = cl.get("/metrics").text
    assert f'id="version">{recommender.version}<' in page
    row = re.search(r'data-endpoint="/post/recommendations/"><th scope="row"><code>[^<]+</code></th>'
                    r'<td class="num">(\d+)</td>', page)
    assert row and int(row.group(1)) == len(users) == _metric(metrics, "recommendations_total")
    assert int(re.search(r'id="log-written">(\d+)<', page).group(1)) == _metric(
        metrics, "exposure_log_written_total") == len(users)
    assert int(re.search(r'id="log-dropped">(\d+)', page).group(1)) == _metric(metrics, "exposure_log_dropped_total")
    assert f"sequence {int(_metric(metrics, 'state_applied_seq'))}" in page


def test_service_page_shows_a_swap_and_the_feed_follows_it(trained, tmp_path):
    """A new version in models/current is swapped in: the Service page lists the swap as /model does, and
    the Feed page ranks with the version now serving."""
    from app.artifacts import set_current
    from tests.test_lifecycle import _version, _wait

    models = tmp_path / "models"
    models.mkdir()
    for name in ("v1", "v2"):
        _version(models, trained["version_dir"], name)
    set_current(models, "v1")
    s = Settings(database_url=trained["db_url"], model_dir=models, state_follow=False, model_watch_seconds=0.05)
    with TestClient(create_app(s)) as cl:
        assert 'id="version">v1<' in cl.get("/console/service").text
        set_current(models, "v2")
        _wait(lambda: cl.get("/model").json()["version"] == "v2")
        page = cl.get("/console/service").text
        swap = cl.get("/model").json()["swaps"][-1]
        assert 'id="version">v2<' in page and "1 swapped in, 0 refused" in page
        assert f"<td>{swap['at']}</td><td>v2</td><td>swapped</td>" in page and swap["previous"] == "v1"
        user = int(cl.app.state.serving.recommender.state.snapshot.user_ids[0])
        api = cl.get("/post/recommendations/", params={"id": user, "time": MOMENT, "limit": 5}).json()
        assert api["model_version"] == "v2"
        columns = Rankings(cl.get("/console/feed", params={"user": user, "time": MOMENT, "limit": 5}).text).columns
        assert columns[api["model"]] == [p["id"] for p in api["recommendations"]]
