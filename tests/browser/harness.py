"""Render a FHIR R4 Questionnaire (+ a prefilled QuestionnaireResponse) in LHC-Forms in headless Chromium.

A test drives the rendered form like a person (clicks and key presses on the real widgets) and reads back the
QuestionnaireResponse that LHC-Forms builds from it::

    with LFormsBrowser() as b:
        b.render(questionnaire, questionnaire_response)
        b.answer_boolean("I.X.1", True)
        b.choose("I.X.2", "Advanced renal cell carcinoma")
        b.type_date("I.X.3", "2024-03-15")
        b.type_text("I.X.1.1", "sunitinib")
        qr = b.harvest()
        b.screenshot(tmp_path / "form.png")

Pieces, all local: ``tests/browser/page.html`` (our page; loads ``lforms`` from ``tests/browser/node_modules``,
pinned by ``package.json`` + ``package-lock.json``: ``npm ci --prefix tests/browser``), a ``http.server`` on
127.0.0.1 (random port, a daemon thread) serving that folder, and Debian's Chromium (``/usr/bin/chromium``,
``apt-get install chromium``) driven by the PyPI ``playwright`` package (test extra) through ``executable_path``:
``playwright install`` is never needed. When Chromium, the lforms files or playwright are missing, ``LFormsBrowser``
skips the test naming what is missing; ``PRIORAUTH_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.

DOM facts relied on (lforms 40.1.3, checked against the rendered page):

* every item is an ``<lhc-item id="item-{linkId}{idPath}">`` where ``idPath`` is ``/1``, ``/1/1``, ... (one
  repetition number per nesting level, e.g. ``item-I.X.1/1/1/1``); its "element id" is the same without ``item-``.
  Items hidden by enableWhen are not in the DOM at all.
* boolean: ``<label id="{elementId}|true">`` / ``|false`` / ``|null`` (Yes / No / Not Answered) radio labels;
  the checked one has class ``ant-radio-wrapper-checked``.
* choice, default (autocomplete) layout: ``<input id="{elementId}" role="combobox">``; focusing it opens the
  shared list ``#lhc-tools-searchResults``, whose ``<li>`` read ``"N:\u00a0 Display"``; clicking one selects it.
* choice with itemControl radio-button / check-box: ``<label class="lhc-answer" id="{elementId}||{code}">`` with
  the display text; checked ones have ``ant-radio-wrapper-checked`` / ``ant-checkbox-wrapper-checked``.
* date: ``<nz-date-picker id="{elementId}">`` holding an ``<input placeholder="MM/DD/YYYY">``; typed text is
  committed with Enter.
* string / text / integer / decimal: ``<input id="{elementId}">`` or ``<textarea id="{elementId}">``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from playwright.sync_api import Browser, Locator, Page, Playwright, ViewportSize

HERE = Path(__file__).resolve().parent
PAGE = "page.html"
LFORMS_DIR = HERE / "node_modules" / "lforms"
REQUIRE_VARIABLE = "PRIORAUTH_REQUIRE_BROWSER"
CHROMIUM_VARIABLE = "PRIORAUTH_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Known-good flags for Debian's Chromium as root in a container; without the background-networking ones Chromium
# keeps trying (refused) connections to Google services. Playwright adds --headless and a fresh --user-data-dir.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Files page.html loads; their presence is what "lforms is installed" means here.
LFORMS_FILES = [
    "dist/lforms/webcomponent/styles.css",
    "dist/lforms/webcomponent/assets/lib/zone.min.js",
    "dist/lforms/webcomponent/runtime.js",
    "dist/lforms/webcomponent/polyfills.js",
    "dist/lforms/webcomponent/main.js",
    "dist/lforms/fhir/R4/lformsFHIR.min.js",
]


def required() -> bool:
    """Whether a missing browser piece fails the test instead of skipping it (CI)."""
    return os.environ.get(REQUIRE_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def chromium_path() -> str | None:
    """``$PRIORAUTH_CHROMIUM``, else ``chromium`` on PATH, else Debian's /usr/bin/chromium; None if none exists."""
    configured = os.environ.get(CHROMIUM_VARIABLE, "").strip()
    candidates = [configured] if configured else [shutil.which("chromium") or "", DEFAULT_CHROMIUM]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def pinned_lforms_version() -> str:
    """The exact lforms version in tests/browser/package.json."""
    return str(json.loads((HERE / "package.json").read_text())["dependencies"]["lforms"])


def missing_pieces() -> list[str]:
    """What is missing for the browser tests, each with the command that installs it; empty when all is there."""
    missing: list[str] = []
    if chromium_path() is None:
        missing.append(f"Chromium ({DEFAULT_CHROMIUM}; `apt-get install -y chromium`, or set {CHROMIUM_VARIABLE})")
    pinned = pinned_lforms_version()
    npm = "`npm ci --prefix tests/browser`"
    absent = [name for name in LFORMS_FILES if not (LFORMS_DIR / name).is_file()]
    if not (LFORMS_DIR / "package.json").is_file():
        missing.append(f"lforms {pinned} in {LFORMS_DIR.parent} ({npm})")
    elif absent:
        missing.append(f"lforms {pinned} files under {LFORMS_DIR} ({', '.join(absent)}; {npm})")
    else:
        installed = json.loads((LFORMS_DIR / "package.json").read_text()).get("version")
        if installed != pinned:
            missing.append(f"lforms {pinned} (node_modules has {installed}; {npm})")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (test extra: `pip install -e '.[test]'`)")
    return missing


def require_browser(missing: list[str] | None = None) -> None:
    """Skip the calling test when a piece is missing, or fail it under ``PRIORAUTH_REQUIRE_BROWSER=1``."""
    missing = missing_pieces() if missing is None else missing
    if not missing:
        return
    message = "browser test needs: " + "; ".join(missing)
    if required():
        pytest.fail(f"{REQUIRE_VARIABLE}=1, so this is a failure: {message}", pytrace=False)
    pytest.skip(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _css_string(value: str) -> str:
    """``value`` as a double-quoted CSS string (for attribute selectors)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _css_id(element_id: str) -> str:
    return f"[id={_css_string(element_id)}]"


class LFormsBrowser:
    """Headless Chromium on page.html with LHC-Forms loaded; items are addressed by linkId.

    ``index`` (default 0) picks among repetitions of an item, in document order. ``timeout_ms`` bounds every wait.
    """

    #: The page under tests/browser and the script that says it is ready (subclasses load another renderer).
    page_name = PAGE
    ready_js = "() => window.lformsReady()"

    def missing(self) -> list[str]:
        """What this renderer needs that is not installed (each with the command that installs it)."""
        return missing_pieces()

    def __init__(self, *, timeout_ms: int = 10_000, width: int = 1000, height: int = 800) -> None:
        self.timeout_ms = timeout_ms
        self.viewport: ViewportSize = {"width": width, "height": height}
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._page: Page | None = None

    # -- life cycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        require_browser(self.missing())
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        handler = functools.partial(_QuietHandler, directory=str(HERE))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="lforms-http", daemon=True)
        self._thread.start()
        port = self._server.server_address[1]

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        # UTC and en-US: dates show and parse the same on every machine.
        context = self._browser.new_context(viewport=self.viewport, timezone_id="UTC", locale="en-US")
        page = context.new_page()
        page.set_default_timeout(self.timeout_ms)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://127.0.0.1:{port}/{self.page_name}")
        page.wait_for_function(self.ready_js)
        self._page = page

    def close(self) -> None:
        """Close the browser and stop the server (idempotent)."""
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._page = None

    @property
    def page(self) -> Page:
        """The Playwright page, for anything the helpers below do not cover."""
        if self._page is None:
            raise RuntimeError("LFormsBrowser is not started: use it as a context manager")
        return self._page

    # -- form -------------------------------------------------------------------------------------------------
    def render(self, questionnaire: dict[str, Any], questionnaire_response: dict[str, Any] | None = None) -> None:
        """Show ``questionnaire`` (FHIR R4), with ``questionnaire_response``'s answers merged in, replacing any form."""
        self.page.evaluate("([q, qr]) => window.render(q, qr)", [questionnaire, questionnaire_response])

    def harvest(self) -> dict[str, Any]:
        """The QuestionnaireResponse (R4) that LHC-Forms builds from the form as it is now."""
        result: dict[str, Any] = self.page.evaluate("() => window.harvest()")
        return result

    def screenshot(self, path: str | os.PathLike[str], *, whole_page: bool = False) -> Path:
        """A PNG of the rendered form (or of the whole page); returns its path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if whole_page:
            self.page.screenshot(path=str(target), full_page=True)
        else:
            self.page.locator("#form-container").screenshot(path=str(target))
        return target

    # -- locating items ---------------------------------------------------------------------------------------
    def element_id(self, link_id: str, index: int = 0) -> str:
        """The element id (``{linkId}{idPath}``) of the ``index``-th rendered item with this linkId; waits for it."""
        prefix = self.page.locator(f"lhc-item[id^={_css_string('item-' + link_id + '/')}]")
        prefix.first.wait_for(state="attached")
        ids: list[str] = prefix.evaluate_all("elements => elements.map(e => e.id)")
        # The prefix also matches linkIds that continue with "/": keep only "item-{linkId}" + "/n" repetitions.
        exact = re.compile("item-" + re.escape(link_id) + r"(?:/\d+)+")
        matching = [item_id for item_id in ids if exact.fullmatch(item_id)]
        if len(matching) <= index:
            raise LookupError(f"linkId {link_id!r}: {len(matching)} rendered, no index {index}")
        return matching[index].removeprefix("item-")

    def item(self, link_id: str, index: int = 0) -> Locator:
        """The ``<lhc-item>`` of that linkId (waits for it to be rendered)."""
        return self.page.locator(_css_id("item-" + self.element_id(link_id, index)))

    def is_shown(self, link_id: str) -> bool:
        """Whether an item with that linkId is rendered now (enableWhen-disabled items are not); does not wait."""
        return self.page.locator(f"lhc-item[id^={_css_string('item-' + link_id + '/')}]").count() > 0

    def wait_shown(self, link_id: str) -> None:
        """Wait until the item is rendered (e.g. after answering the question its enableWhen refers to)."""
        self.element_id(link_id)

    def wait_hidden(self, link_id: str) -> None:
        """Wait until no item with that linkId is rendered."""
        selector = f"lhc-item[id^={_css_string('item-' + link_id + '/')}]"
        self.page.locator(selector).first.wait_for(state="detached")

    # -- answering like a person ------------------------------------------------------------------------------
    def answer_boolean(self, link_id: str, value: bool | None, index: int = 0) -> None:
        """Click Yes (True), No (False) or Not Answered (None)."""
        element = self.element_id(link_id, index)
        suffix = {True: "true", False: "false", None: "null"}[value]
        label = self.page.locator(_css_id(f"{element}|{suffix}"))
        label.click()
        _expect_class(label, "ant-radio-wrapper-checked")

    def choose(self, link_id: str, display: str, index: int = 0) -> None:
        """Pick the answer whose display text is ``display``: a radio/check-box click, or in the default
        autocomplete layout, focus the field, type the text and click the matching list entry."""
        element = self.element_id(link_id, index)
        item = self.page.locator(_css_id("item-" + element))
        options = item.locator("label.lhc-answer")
        if options.count():
            option = options.filter(has_text=re.compile("^\\s*" + re.escape(display) + "\\s*$"))
            option.click()
            _expect_class(option, "wrapper-checked")
            return
        field = self.page.locator(_css_id(element))
        field.click()
        field.press("ControlOrMeta+a")
        field.press_sequentially(display)
        entry = self.page.locator("#lhc-tools-searchResults li").filter(
            has_text=re.compile("^\\d+:\\s+" + re.escape(display) + "$")
        )
        entry.click()
        _expect_chosen(item, field, display)

    def type_date(self, link_id: str, iso_date: str, index: int = 0) -> None:
        """Type ``YYYY-MM-DD`` into the date field in the format its placeholder asks for, then Enter."""
        year, month, day = iso_date.split("-")
        field = self.page.locator(_css_id(self.element_id(link_id, index))).locator("input")
        placeholder = field.get_attribute("placeholder") or "MM/DD/YYYY"
        shown = placeholder.replace("YYYY", year).replace("MM", month).replace("DD", day)
        field.click()
        field.press("ControlOrMeta+a")
        field.press_sequentially(shown)
        field.press("Enter")
        _expect_value(field, shown)

    def type_text(self, link_id: str, text: str, index: int = 0) -> None:
        """Replace the text of a string/text/number field by typing, then Tab out of it."""
        field = self.page.locator(_css_id(self.element_id(link_id, index)))
        field.click()
        field.press("ControlOrMeta+a")
        if text:
            field.press_sequentially(text)
        else:
            field.press("Backspace")
        field.press("Tab")
        _expect_value(field, text)

    # -- reading what the form shows --------------------------------------------------------------------------
    def shown_answer(self, link_id: str, index: int = 0) -> str:
        """What a person sees as the answer: the checked option label(s) ("Yes", "Oral", ...; joined by "; ") for
        radio/check-box items, else the field's text ("" when empty)."""
        element = self.element_id(link_id, index)
        item = self.page.locator(_css_id("item-" + element))
        checked = item.locator(".ant-radio-wrapper-checked, .ant-checkbox-wrapper-checked")
        if checked.count():
            return "; ".join(text.strip() for text in checked.all_inner_texts())
        field = item.locator("input, textarea").first
        return field.input_value()


def _expect_class(locator: Locator, fragment: str, timeout_ms: int = 5_000) -> None:
    """Wait until the element's class attribute contains ``fragment``."""
    locator.page.wait_for_function(
        "([element, fragment]) => element.className.includes(fragment)",
        arg=[locator.element_handle(), fragment],
        timeout=timeout_ms,
    )


def _expect_chosen(item: Locator, field: Locator, display: str, timeout_ms: int = 5_000) -> None:
    """Wait until the choice shows ``display``: as the field's value (one answer), or as a selected-answer chip
    ("× display") beside an emptied field (a repeating choice)."""
    item.page.wait_for_function(
        """([item, field, text]) => field.value === text ||
            [...item.querySelectorAll('li, span')].some(e => e.textContent.replace('\u00d7', '').trim() === text)""",
        arg=[item.element_handle(), field.element_handle(), display],
        timeout=timeout_ms,
    )


def _expect_value(locator: Locator, value: str, timeout_ms: int = 5_000) -> None:
    """Wait until the field's value is ``value``."""
    locator.page.wait_for_function(
        "([element, value]) => element.value === value",
        arg=[locator.element_handle(), value],
        timeout=timeout_ms,
    )


def main(argv: list[str] | None = None) -> int:
    """Screenshot a Questionnaire (+ optional prefilled QuestionnaireResponse) as LHC-Forms renders it.

    ``python -m tests.browser.harness Q.json [--qr QR.json] --out form.png``
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("questionnaire", type=Path)
    parser.add_argument("--qr", type=Path, help="a QuestionnaireResponse whose answers are merged in")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--whole-page", action="store_true")
    args = parser.parse_args(argv)
    missing = missing_pieces()
    if missing:
        parser.error("missing: " + "; ".join(missing))
    questionnaire = json.loads(args.questionnaire.read_text())
    response = json.loads(args.qr.read_text()) if args.qr else None
    with LFormsBrowser() as browser:
        browser.render(questionnaire, response)
        print(browser.screenshot(args.out, whole_page=args.whole_page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
