"""CSIRO Smart Forms (``@aehrc/smart-forms-renderer``) in headless Chromium, for rendering a DTR package as received.

``tests/browser/smart-forms/`` holds the pinned ``package.json`` + ``package-lock.json`` and ``entry.jsx``, bundled by
esbuild into ``dist/smart-forms.js``::

    npm ci --prefix tests/browser/smart-forms --ignore-scripts && npm run build --prefix tests/browser/smart-forms

``smart-forms.html`` loads the bundle; the server, Chromium and the skip-or-fail rule are ``harness.LFormsBrowser``'s.

DOM facts relied on (renderer 1.4.0, checked against the rendered page): every question's label text is in the page
as written (``prefix`` then ``text``), a choice from a value set is an MUI autocomplete ``input`` whose options
are listed in ``[role="listbox"] [role="option"]`` once opened, and a value set it cannot resolve shows
"error fetching options" (an unreachable terminology server is configured, so only contained ones resolve).
"""

from __future__ import annotations

import json
from typing import Any

from tests.browser.harness import HERE, LFormsBrowser, chromium_path

SMART_FORMS_DIR = HERE / "smart-forms"
BUNDLE = SMART_FORMS_DIR / "dist" / "smart-forms.js"
RENDERER = SMART_FORMS_DIR / "node_modules" / "@aehrc" / "smart-forms-renderer" / "package.json"
INSTALL = (
    "`npm ci --prefix tests/browser/smart-forms --ignore-scripts && npm run build --prefix tests/browser/smart-forms`"
)


def pinned_renderer_version() -> str:
    package = json.loads((SMART_FORMS_DIR / "package.json").read_text())
    return str(package["dependencies"]["@aehrc/smart-forms-renderer"])


class SmartFormsBrowser(LFormsBrowser):
    """Headless Chromium on smart-forms.html; ``render`` shows a Questionnaire (+ a prefilled response)."""

    page_name = "smart-forms/smart-forms.html"
    ready_js = "() => window.smartFormsLoaded === true"

    def missing(self) -> list[str]:
        missing: list[str] = []
        if chromium_path() is None:
            missing.append("Chromium (`apt-get install -y chromium`)")
        pinned = pinned_renderer_version()
        if not RENDERER.is_file() or json.loads(RENDERER.read_text()).get("version") != pinned:
            missing.append(f"@aehrc/smart-forms-renderer {pinned} ({INSTALL})")
        if not BUNDLE.is_file():
            missing.append(f"the esbuild bundle {BUNDLE} ({INSTALL})")
        try:
            import playwright  # noqa: F401
        except ImportError:
            missing.append("the playwright Python package (test extra)")
        return missing

    def render(self, questionnaire: dict[str, Any], questionnaire_response: dict[str, Any] | None = None) -> None:
        """Show the form and wait until the renderer has drawn its first question."""
        self.page.evaluate("([q, qr]) => window.renderSmartForm(q, qr)", [questionnaire, questionnaire_response])
        self.page.wait_for_function(
            "() => !document.body.innerText.includes('Loading questionnaire')"
            " && document.querySelectorAll('#form-container input').length > 0"
        )

    def harvest(self) -> dict[str, Any]:
        """The QuestionnaireResponse the renderer holds now."""
        result: dict[str, Any] = self.page.evaluate("() => window.smartFormResponse()")
        return result

    def text(self) -> str:
        """The rendered form's visible text."""
        return str(self.page.locator("#form-container").inner_text())
