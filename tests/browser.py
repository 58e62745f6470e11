"""A headless Chromium driven over the DevTools protocol, for the tests of the jobs page.

The browser is Debian's `chromium` package. `chromium_path()` finds it, and installs it with
apt when it is missing and the tests run as root (as in CI); otherwise it says how to install
it. `python -m tests.browser` does the same ahead of a test run.

The protocol is spoken over aiohttp's websocket client: a browser-level connection, one
flattened session per page, commands matched to their answers by id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.debian import PackageUnavailable, apt_install

CHROMIUM = "/usr/bin/chromium"

FLAGS = (
    "--headless",
    "--no-sandbox",  # root has no user namespace sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)

_DEVTOOLS_LINE = re.compile(rb"DevTools listening on (ws://\S+)")
_STDERR_KEPT = 256 * 1024


class BrowserUnavailable(Exception):
    """Chromium is not installed and cannot be installed here; the message says what to do."""


class BrowserError(Exception):
    """The browser or the page reported an error."""


def chromium_path(install: bool = True) -> str:
    """The Chromium executable, installing Debian's package first when it is missing.

    Raises BrowserUnavailable when it is missing and cannot be installed (not root, no apt),
    and subprocess.CalledProcessError when apt itself fails.
    """
    for candidate in (CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if not install:
        raise BrowserUnavailable(f"{CHROMIUM} is not installed")
    try:
        apt_install("chromium", CHROMIUM)
    except PackageUnavailable as exc:
        raise BrowserUnavailable(str(exc)) from None
    return CHROMIUM


class Page:
    """One tab, through its own session of the browser's connection."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.errors: list[str] = []
        self._loaded = asyncio.Event()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            described = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {described}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(
                "console: "
                + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            where = entry.get("source", "other")
            self.errors.append(f"{where}: {entry.get('text')} {entry.get('url', '')}".strip())

    async def add_init_script(self, source: str) -> None:
        """Run `source` in every document this page opens, before the document's own scripts."""
        await self.send("Page.addScriptToEvaluateOnNewDocument", source=source)

    async def goto(self, url: str, within: float = 30.0) -> None:
        """Open `url` and wait for its load event."""
        self._loaded.clear()
        answer = await self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), within)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        answer = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            described = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{described}\n  in: {expression[:300]}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, within: float = 20.0) -> Any:
        """The first truthy value of `expression`, checked in the page on every DOM change.

        Fails after `within` seconds, saying what it waited for.
        """
        failure = f"timed out after {within} s waiting for: {expression}"
        script = f"""new Promise((resolve, reject) => {{
            const check = () => {{
                let value;
                try {{ value = ({expression}); }} catch (e) {{ value = undefined; }}
                if (value) {{ stop(); resolve(value); }}
            }};
            const observer = new MutationObserver(check);
            const ticker = setInterval(check, 100);
            const deadline = setTimeout(() => {{
                stop();
                reject(new Error({orjson.dumps(failure).decode()}));
            }}, {within * 1000});
            function stop() {{
                observer.disconnect();
                clearInterval(ticker);
                clearTimeout(deadline);
            }}
            observer.observe(document, {{
                subtree: true, childList: true, attributes: true, characterData: true
            }});
            check();
        }})"""
        try:
            return await asyncio.wait_for(self.evaluate(script), within + 5)
        except BrowserError as exc:
            if self.errors:
                raise BrowserError(f"{exc}\nerrors in the page: {self.errors}") from None
            raise

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        box = await self.evaluate(
            f"""(() => {{
                const el = document.querySelector({orjson.dumps(selector).decode()});
                if (!el) return null;
                el.scrollIntoView({{block: "center", inline: "center"}});
                const r = el.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=1,
            )

    async def select(self, selector: str, value: str) -> None:
        """Choose an option of a <select>, as a user would (a change event follows)."""
        found = await self.evaluate(
            f"""(() => {{
                const el = document.querySelector({orjson.dumps(selector).decode()});
                if (!el) return false;
                el.value = {orjson.dumps(value).decode()};
                el.dispatchEvent(new Event("change", {{bubbles: true}}));
                return el.value === {orjson.dumps(value).decode()};
            }})()"""
        )
        if not found:
            raise BrowserError(f"no option {value!r} in {selector!r}")

    async def screenshot(self, path: str | Path) -> None:
        """A PNG of the whole page, not only the viewport."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        answer = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        await asyncio.to_thread(Path(path).write_bytes, base64.b64decode(answer["data"]))


class Browser:
    """A Chromium process with a fresh profile, and the protocol connection to it."""

    def __init__(self, proc: asyncio.subprocess.Process, profile: str) -> None:
        self.proc = proc
        self.profile = profile
        self.stderr = bytearray()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None

    async def _connect(self, within: float) -> None:
        assert self.proc.stderr is not None
        stderr = self.proc.stderr
        async with asyncio.timeout(within):
            while True:
                line = await stderr.readline()
                if not line:
                    raise BrowserError(
                        "Chromium exited before it listened:\n"
                        + self.stderr.decode(errors="replace")
                    )
                self.stderr += line
                found = _DEVTOOLS_LINE.search(line)
                if found:
                    url = found.group(1).decode()
                    break
        self._drain = asyncio.create_task(self._keep_draining(stderr))
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0, autoping=True)
        self._reader = asyncio.create_task(self._read())

    async def _keep_draining(self, stderr: asyncio.StreamReader) -> None:
        # Chromium would block writing its log to a full pipe.
        while chunk := await stderr.read(65536):
            self.stderr += chunk
            del self.stderr[:-_STDERR_KEPT]

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = orjson.loads(message.data)
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        if "error" in data:
                            future.set_exception(BrowserError(str(data["error"])))
                        else:
                            future.set_result(data.get("result", {}))
                elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                    page.on_event(data["method"], data.get("params", {}))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BrowserError("the browser connection closed"))
            self._pending.clear()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        within: float = 30.0,
    ) -> dict[str, Any]:
        """Send one protocol command and wait for its answer."""
        assert self._ws is not None
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send_str(orjson.dumps(message).decode())
        return await asyncio.wait_for(future, within)

    async def new_page(self, width: int = 1280, height: int = 900) -> Page:
        """A new tab, with errors of its scripts and console collected in `page.errors`."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close", within=5)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        for task in (self._reader, self._drain):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.asynccontextmanager
async def launch(executable: str, within: float = 30.0) -> AsyncIterator[Browser]:
    """Start Chromium headless with a fresh profile; close it and remove the profile after."""
    profile = tempfile.mkdtemp(prefix="aijobs-chromium-")
    proc = await asyncio.create_subprocess_exec(
        executable,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Its temporary files go with the profile, whatever becomes of the process.
        env={**os.environ, "TMPDIR": profile},
    )
    browser = Browser(proc, profile)
    try:
        await browser._connect(within)
        yield browser
    finally:
        await browser.close()


def main() -> int:
    try:
        print(chromium_path())
    except BrowserUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
