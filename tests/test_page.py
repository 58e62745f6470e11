"""The jobs page at `/`: served from the package, and used in a real headless Chromium."""

from __future__ import annotations

import asyncio
import re
import subprocess
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from service.entities.store import EntityStore
from service.runtime import running_worker
from tests.browser import Browser, BrowserUnavailable, Page, chromium_path, launch
from tests.conftest import DOCUMENT, make_settings, seed_controls, token_for
from tests.fake_anthropic import Delay, FakeAnthropic, Reply, request_text

Client = TestClient[Any, Any]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = Path("/tmp/aijobs-page.png")

# Installing Chromium on first use may take a few minutes.
BROWSER_TIMEOUT_S = 900


# -- served from the package --------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def links_of(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


def test_the_static_files_are_package_data() -> None:
    static = resources.files("service").joinpath("static")
    for name in ("index.html", "app.css", "app.js"):
        assert static.joinpath(name).is_file(), name
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["service"]
    assert "static/*" in package_data


def test_the_page_loads_nothing_from_elsewhere() -> None:
    static = resources.files("service").joinpath("static")
    html = static.joinpath("index.html").read_text(encoding="utf-8")
    urls = [u for u in links_of(html) if not u.startswith("#")]
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    css = static.joinpath("app.css").read_text(encoding="utf-8")
    assert "@import" not in css and "url(" not in css
    js = static.joinpath("app.js").read_text(encoding="utf-8")
    assert not re.search(r"https?://", js)


async def test_the_page_and_its_assets_are_served_with_cache_headers(client: Client) -> None:
    page = await client.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assets = [u for u in links_of(html) if u.startswith("/static/")]
    assert {u.split("?")[0] for u in assets} == {
        "/static/app.css",
        "/static/app.js",
        "/static/favicon.svg",
    }
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    for url in assets:
        assert re.fullmatch(r"/static/[\w.]+\?v=[0-9a-f]{24}", url), url
        asset = await client.get(url)
        assert asset.status == 200, url
        assert asset.headers["Content-Type"].startswith(types[Path(url.split("?")[0]).suffix])
        assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert asset.headers["X-Content-Type-Options"] == "nosniff"

    # Without the current hash, an asset is revalidated; with its ETag, unchanged is a 304.
    plain = await client.get("/static/app.js")
    assert plain.headers["Cache-Control"] == "no-cache"
    etag = plain.headers["ETag"]
    again = await client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    unchanged_page = await client.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert unchanged_page.status == 304

    for missing in ("/static/nope.js", "/static/index.html", "/static/..%2Fapi%2Fapp.py"):
        response = await client.get(missing)
        assert response.status == 404, missing
        assert (await response.json())["error"]["code"] == "not_found"


# -- in a browser -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return chromium_path()
    except BrowserUnavailable as exc:
        pytest.skip(f"no browser for the page tests: {exc}")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"installing Debian's chromium failed: {exc}")


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with launch(chromium) as the_browser:
        yield the_browser


def js(value: Any) -> str:
    return orjson.dumps(value).decode()


def answer(body: dict[str, Any]) -> dict[str, Any] | None:
    """The fake Claude's answers: every third control it is shown, and a score of 72."""
    schema = body["tools"][0]["input_schema"]["properties"]
    if "mapped_controls" in schema:
        shown = [int(i) for i in re.findall(r'<control id="(\d+)"', request_text(body))]
        return {
            "mapped_controls": [
                {"control_id": c, "confidence": 60 + c % 40, "rationale": f"Section {c} says so"}
                for c in shown
                if c % 3 == 0
            ]
        }
    if "score" in schema:
        return {
            "score": 72,
            "rationale": "Quarterly access reviews and MFA are described; logging is not.",
            "recommendations": ["Say how access reviews are recorded", "Cover service accounts"],
        }
    return None


async def seed(entities: EntityStore) -> dict[str, int]:
    requirement = await entities.create_requirement(
        "ISMS-9.2", "Access reviews", "Access rights are reviewed at planned intervals."
    )
    document = await entities.create_document("Access control policy", DOCUMENT)
    empty = await entities.create_document("Draft policy (empty)", "")
    mapping = await entities.create_mapping(requirement["id"], document["id"])
    controls = await seed_controls(entities, 60)  # batches of 25 + 25 + 10
    return {
        "requirement": requirement["id"],
        "document": document["id"],
        "empty": empty["id"],
        "mapping": mapping["id"],
        "mapped": sum(1 for c in controls if c["id"] % 3 == 0),
    }


RECORD_PROGRESS = """(() => {
    // Every value the progress bar of the first ai-map-controls row shows, in order, and
    // every way of following jobs the page reports.
    window.seenProgress = [];
    window.seenModes = [];
    const push = (seen, value) => {
        if (value !== null && value !== undefined && seen[seen.length - 1] !== value) {
            seen.push(value);
        }
    };
    const record = () => {
        const bar = document.querySelector(
            '#jobs tbody tr[data-job-type="ai-map-controls"] [role=progressbar]');
        push(window.seenProgress, bar && bar.getAttribute("aria-valuenow"));
        push(window.seenModes, document.querySelector("#connection").dataset.mode);
    };
    new MutationObserver(record).observe(document.body, {
        subtree: true, childList: true, attributes: true});
    return true;
})()"""


async def loaded(page: Page, ids: dict[str, int]) -> None:
    """Wait until the page has loaded the entities to dispatch on."""
    await page.wait_for(
        f"document.querySelector('#pick-document option[value=\"{ids['empty']}\"]')"
    )


async def dispatch_from_page(page: Page, job_type: str, select: str, entity_id: int) -> None:
    await page.select(select, str(entity_id))
    await page.click(f"#dispatch-{job_type} button")


async def map_controls_with_progress(page: Page, ids: dict[str, int]) -> list[int]:
    """Dispatch ai-map-controls from the page; the values its progress bar showed, to 3 of 3."""
    assert await page.evaluate(RECORD_PROGRESS)
    await dispatch_from_page(page, "ai-map-controls", "#pick-document", ids["document"])
    await page.wait_for("new Set(window.seenProgress).size >= 2")
    await page.wait_for(
        "document.querySelector('#jobs tbody tr[data-job-type=\"ai-map-controls\"]')"
        ".dataset.status === 'completed'"
    )
    seen: list[str] = await page.evaluate("window.seenProgress")
    return [int(v) for v in seen]


async def shown_controls(page: Page) -> list[str]:
    rows = await page.wait_for(
        """(() => {
            const rows = document.querySelectorAll(
                '#detail [data-result="ai-map-controls"] tbody tr');
            return rows.length && [...rows].map((r) => r.cells[0].textContent);
        })()"""
    )
    assert isinstance(rows, list)
    return rows


@pytest.mark.timeout(BROWSER_TIMEOUT_S)
async def test_dispatch_from_the_page_and_follow_it_live(
    browser: Browser, client: Client, worker: Any, entities: EntityStore, fake: FakeAnthropic
) -> None:
    ids = await seed(entities)
    fake.responder = answer
    fake.default = Delay(0.4)
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    # Without a token the API answers 401: the page asks for one, then uses it.
    await page.wait_for("!document.querySelector('#sign-in').hidden")
    await page.evaluate(f"document.querySelector('#token').value = {js(token_for())}")
    await page.click("#sign-in-form button")
    await loaded(page, ids)
    assert await page.evaluate("document.querySelector('#sign-in').hidden")
    # The token went to the API once, which keeps it in a cookie the page cannot read.
    assert await page.evaluate("document.cookie + window.sessionStorage.length") == "0"

    seen = await map_controls_with_progress(page, ids)
    assert len(set(seen)) >= 2 and seen == sorted(seen) and seen[-1] == 3, seen
    # Followed by its event stream, not by polling.
    assert await page.evaluate("window.seenModes") == ["idle", "live", "idle"]

    # Dispatched from the page, the job is the one shown in detail: its result appears.
    controls = await shown_controls(page)
    assert len(controls) == ids["mapped"]
    assert all(re.fullmatch(r"C-\d{3} Control \d+", c) for c in controls), controls[:3]
    row_status = await page.evaluate(
        "document.querySelector('#jobs tbody tr').dataset.jobType + ' '"
        " + document.querySelector('#jobs tbody tr').dataset.status"
    )
    assert row_status == "ai-map-controls completed"

    await dispatch_from_page(page, "ai-match", "#pick-mapping", ids["mapping"])
    score = await page.wait_for(
        "document.querySelector('#detail [data-result=\"ai-match\"] .score-value')?.textContent"
    )
    assert score == "72"
    recommendations = await page.evaluate(
        "[...document.querySelectorAll('#detail [data-result=\"ai-match\"] li')]"
        ".map((li) => li.textContent)"
    )
    assert recommendations == ["Say how access reviews are recorded", "Cover service accounts"]
    assert await page.evaluate("document.querySelectorAll('#jobs tbody tr').length") == 2

    # A click on the finished job shows its result again.
    await page.click('#jobs tbody tr[data-job-type="ai-map-controls"] .job-link')
    assert await shown_controls(page) == controls

    # An entity that cannot be analysed: the API's 422 is shown, and no job appears.
    await dispatch_from_page(page, "ai-map-controls", "#pick-document", ids["empty"])
    error = await page.wait_for(
        "!document.querySelector('#dispatch-error').hidden"
        " && document.querySelector('#dispatch-error').textContent"
    )
    assert "no content" in error and "422 not_analysable" in error, error
    assert await page.evaluate("document.querySelectorAll('#jobs tbody tr').length") == 2

    await page.screenshot(SCREENSHOT)
    unexpected = [e for e in page.errors if not re.search("status of (401|422)", e)]
    assert unexpected == []


@pytest.mark.timeout(BROWSER_TIMEOUT_S)
@pytest.mark.parametrize(
    "without",
    [
        # A browser without EventSource.
        "delete window.EventSource;",
        # Event streams that fail (as behind a proxy that refuses them): the job is polled.
        """window.EventSource = class extends window.EventSource {
            constructor(url, init) { super(url.replace(/\\/events/, "/no-stream"), init); }
        };""",
    ],
    ids=["no-eventsource", "stream-refused"],
)
async def test_without_event_streams_the_page_polls(
    without: str,
    browser: Browser,
    client: Client,
    worker: Any,
    entities: EntityStore,
    fake: FakeAnthropic,
) -> None:
    ids = await seed(entities)
    fake.responder = answer
    fake.default = Delay(1.5)  # each progress step outlasts the 1 s polling interval
    page = await browser.new_page()
    await page.add_init_script(without)
    # The token handed over in the URL's fragment, as a sign-in redirect does.
    await page.goto(f"{client.make_url('/')}#access_token={token_for()}")
    await loaded(page, ids)
    assert await page.evaluate("window.location.hash") == ""

    assert await page.evaluate(RECORD_PROGRESS)
    await dispatch_from_page(page, "ai-map-controls", "#pick-document", ids["document"])
    await page.wait_for("document.querySelector('#connection').dataset.mode === 'polling'")
    await page.wait_for("new Set(window.seenProgress).size >= 2")
    assert len(await shown_controls(page)) == ids["mapped"]
    seen = [int(v) for v in await page.evaluate("window.seenProgress")]
    assert seen == sorted(seen) and seen[-1] == 3, seen
    await page.wait_for("document.querySelector('#connection').dataset.mode === 'idle'")
    unexpected = [e for e in page.errors if "/no-stream" not in e]
    assert unexpected == []


@pytest.mark.timeout(BROWSER_TIMEOUT_S)
async def test_the_page_shows_the_partial_result_and_the_text_being_written(
    browser: Browser,
    client: Client,
    dsn: str,
    pool: asyncpg.Pool,
    entities: EntityStore,
    fake: FakeAnthropic,
) -> None:
    ids = await seed(entities)
    release = asyncio.Event()
    fake.responder = answer
    # One batch at a time: the first two answer, the third stops after its first rationale.
    fake.enqueue(Reply(), Reply(), Reply(hold=(94, release)))
    settings = make_settings(dsn, fake.url, parallel_batches=1)
    async with running_worker(settings, dsn, pool):
        page = await browser.new_page()
        await page.goto(f"{client.make_url('/')}#access_token={token_for()}")
        await loaded(page, ids)
        await dispatch_from_page(page, "ai-map-controls", "#pick-document", ids["document"])
        # The controls the two finished batches mapped, while the job runs.
        found = await page.wait_for(
            """(() => {
                const rows = document.querySelectorAll('#detail .partial-result tbody tr');
                const done = document.querySelector('#detail .partial-result .summary');
                return done && done.textContent.includes("by 2 finished batches")
                    && [...rows].map((r) => Number(r.dataset.controlId));
            })()"""
        )
        assert isinstance(found, list)
        assert sorted(found) == [c for c in range(1, 51) if c % 3 == 0]
        # The rationale the third batch's model is writing.
        written = await page.wait_for(
            "(document.querySelector('#detail .live-text .live-stream')?.textContent || '')"
            ".startsWith('batch 3') && document.querySelector('#detail .live-stream').textContent"
        )
        assert written == "batch 3: #51 Section 51 says so", written
        status = await page.evaluate(
            "document.querySelector('#detail .detail-head').dataset.status"
        )
        assert status == "processing"
        release.set()
        await shown_controls(page)
        assert await page.evaluate("document.querySelector('#detail .live-text')") is None
        assert await page.evaluate("document.querySelector('#detail .partial-result')") is None
        assert page.errors == []
