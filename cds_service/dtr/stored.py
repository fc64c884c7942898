"""The stored form of the payer's prefill: each answer as its value and the resources it cites.

Every prefilled answer (``prefill.py``) carries the same DTR ``information-origin`` extension (source
``auto-server``) and one ``answer-evidence`` extension per cited resource: about three quarters of its JSON, stored
again with every coverage assertion. The audit store keeps ``[value, [evidence references]]`` per answer instead
(``compact``) and rebuilds the exact FHIR answer JSON, byte for byte, when it reads the row (``expand``). An answer
of any other shape is stored whole, and rows stored whole by earlier versions read as they are.

The coverage assertion keeps that compact JSON deflated (``pack``/``unpack``): about 1.5 KB becomes 0.5 KB, so an
assertion with its prefill fits three to a 4 KB SQLite page instead of one (the prefill's JSON is repetitive: code
system URLs, reference prefixes, linkId stems).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

INFORMATION_ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
ANSWER_EVIDENCE = "https://priorauth-cds.org/fhir/StructureDefinition/answer-evidence"

#: questionnaire id -> linkId -> answers; an answer is FHIR JSON (a dict) or its stored form ``[value, refs]``.
StoredAnswers = dict[str, dict[str, list[Any]]]


def answer(value: Mapping[str, Any], evidence: Iterable[str]) -> dict[str, Any]:
    """A prefilled QuestionnaireResponse answer: made by the server from the chart, citing ``evidence``."""
    extensions: list[dict[str, Any]] = [
        {"url": INFORMATION_ORIGIN, "extension": [{"url": "source", "valueCode": "auto-server"}]}
    ]
    extensions += [{"url": ANSWER_EVIDENCE, "valueReference": {"reference": ref}} for ref in dict.fromkeys(evidence)]
    return {"extension": extensions, **value}


def _compact_answer(full: Any) -> Any:
    """``[value, refs]`` when ``answer(value, refs)`` gives ``full`` back byte for byte, else ``full`` itself.

    Checked member by member (key order included) rather than by serialising ``full`` and its rebuilt form and
    comparing the bytes: same outcome (``tests/test_stored_prefill.py`` compares both over random answers), a
    third of the audit write's Python time before. One loop over the evidence that stops at the first mismatch
    (6 us of 20 a call on the acceptance request's 13 answers, against a helper call per extension).
    """
    if not isinstance(full, dict) or next(iter(full), None) != "extension":
        return full
    extensions = full["extension"]
    if not isinstance(extensions, list) or not extensions:
        return full
    refs: list[str] = []
    for extension in extensions[1:]:
        # Exactly one of answer()'s evidence extensions (members in order), each resource cited once.
        if not isinstance(extension, dict) or list(extension) != _EVIDENCE_MEMBERS:
            return full
        reference = extension["valueReference"]
        if extension["url"] != ANSWER_EVIDENCE or not isinstance(reference, dict) or len(reference) != 1:
            return full
        ref = reference.get("reference")
        if not isinstance(ref, str) or ref in refs:
            return full
        refs.append(ref)
    try:
        if orjson.dumps(extensions[0]) != _ORIGIN_JSON:
            return full
    except TypeError:
        return full
    value = full.copy()
    del value["extension"]
    return [value, refs]


#: The information-origin extension ``answer`` puts first, as JSON; the members of each evidence extension, in order.
_ORIGIN_JSON = orjson.dumps(answer({}, ())["extension"][0])
_EVIDENCE_MEMBERS = ["url", "valueReference"]


def _expand_answer(stored: Any) -> Any:
    if isinstance(stored, list) and len(stored) == 2 and isinstance(stored[0], dict) and isinstance(stored[1], list):
        return answer(stored[0], stored[1])
    return stored


def compact(answers: Mapping[str, Mapping[str, Iterable[Any]]]) -> StoredAnswers:
    """The stored form of ``{questionnaire id: {linkId: [answer JSON]}}``."""
    return {
        qid: {link_id: [_compact_answer(a) for a in items] for link_id, items in by_link.items()}
        for qid, by_link in answers.items()
    }


def expand(stored: Any) -> Any:
    """The FHIR answers of a stored prefill (either form); anything unexpected is returned unchanged."""
    if not isinstance(stored, dict):
        return stored
    return {
        qid: (
            {
                link: [_expand_answer(a) for a in items] if isinstance(items, list) else items
                for link, items in by_link.items()
            }
            if isinstance(by_link, dict)
            else by_link
        )
        for qid, by_link in stored.items()
    }


#: Raw deflate (no zlib header) with a 2 KB window: the JSON is about 1.5 KB, and a small window sets up in a third
#: of the time of the default 32 KB one (12 us instead of 35 on the acceptance request's prefill, same size).
_DEFLATE_WINDOW_BITS = -11


def pack(answers: Mapping[str, Mapping[str, Iterable[Any]]]) -> bytes:
    """The stored bytes of a prefill: its compact form (``compact``) as JSON, deflated."""
    deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, _DEFLATE_WINDOW_BITS)
    return deflate.compress(orjson.dumps(compact(answers))) + deflate.flush()


def unpack(stored: bytes) -> Any:
    """The FHIR answers of ``pack``'s bytes (questionnaire ids in the order they were given)."""
    return expand(orjson.loads(zlib.decompress(stored, -15)))
