"""``prefetch.fill_template`` parses each template once (``_template_parts``) and fills it per call: the same query,
or None, as the regex substitution it replaced, for any template and context."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.discovery import PREFETCH_TEMPLATES
from cds_service.prefetch import _CONTEXT_TOKEN, _TOKEN, _USER_TOKENS, _safe_value, _user_ids, fill_template


def _substituted(template: str, context: Mapping[str, Any]) -> str | None:
    """The previous ``fill_template``, verbatim but for names."""
    user_ids = _user_ids(context.get("userId"))
    unfilled = False

    def value_of(token: str) -> str | None:
        if token in _USER_TOKENS.values():
            value: Any = user_ids.get(token)
        else:
            match = _CONTEXT_TOKEN.fullmatch(token)
            value = context.get(match.group(1)) if match else None
        return value if _safe_value(value) else None

    def substitute(match: re.Match[str]) -> str:
        nonlocal unfilled
        value = value_of(match.group(1).strip())
        if value is None:
            unfilled = True
            return ""
        return quote(value, safe="")

    filled = _TOKEN.sub(substitute, template)
    if unfilled or "{{" in filled or "}}" in filled:
        return None
    return filled


_PIECES = st.sampled_from(
    [
        "{{context.patientId}}",
        "{{ context.encounterId }}",
        "{{context.userId}}",
        "{{userPractitionerId}}",
        "{{ userPractitionerRoleId}}",
        "{{userPatientId}}",
        "{{context.}}",
        "{{unknown}}",
        "{{",
        "}}",
        "{",
        "}",
        "{{{context.patientId}}}",
        "Patient/",
        "?patient=",
        "&status=active",
        "",
    ]
)
_TEMPLATES = st.lists(_PIECES | st.text(max_size=4), max_size=6).map("".join) | st.sampled_from(
    list(PREFETCH_TEMPLATES.values())
)
_VALUES = (
    st.none()
    | st.integers()
    | st.sampled_from(["ava", "a b", "..", "x&y", "{{", "}}", "a{b", "é", ""])
    | st.text(max_size=6)
)
_USERS = (
    st.sampled_from(
        [
            "Practitioner/p1",
            "PractitionerRole/r1",
            "Patient/x",
            "RelatedPerson/q",
            "https://h/fhir/Practitioner/p2",
            "a/b/c",
        ]
    )
    | _VALUES
)
_CONTEXTS = st.fixed_dictionaries(
    {},
    optional={"patientId": _VALUES, "encounterId": _VALUES, "userId": _USERS, "": _VALUES},
)


@settings(max_examples=1500, deadline=None)
@given(_TEMPLATES, _CONTEXTS)
def test_fill_template_matches_the_regex_substitution(template: str, context: dict[str, Any]) -> None:
    assert fill_template(template, context) == _substituted(template, context)


def test_every_service_template_fills_alike() -> None:
    context = {"patientId": "ava", "userId": "PractitionerRole/r1", "encounterId": "e1"}
    for template in PREFETCH_TEMPLATES.values():
        assert fill_template(template, context) == _substituted(template, context)
