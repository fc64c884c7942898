"""The stored form of the payer's prefill: each answer as its value and the resources it cites.

Every prefilled answer (``prefill.py``) carries the same DTR ``information-origin`` extension (source
``auto-server``) and one ``answer-evidence`` extension per cited resource: about three quarters of its JSON, stored
again with every coverage assertion. The audit store keeps ``[value, [evidence references]]`` per answer instead
(``compact``) and rebuilds the exact FHIR answer JSON, byte for byte, when it reads the row (``expand``). An answer
of any other shape is stored whole, and rows stored whole by earlier versions read as they are.
"""

from __future__ import annotations

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
    """``[value, refs]`` when ``answer(value, refs)`` gives ``full`` back byte for byte, else ``full`` itself."""
    if not isinstance(full, dict) or not isinstance(full.get("extension"), list):
        return full
    refs: list[Any] = []
    for extension in full["extension"][1:]:
        reference = extension.get("valueReference") if isinstance(extension, dict) else None
        refs.append(reference.get("reference") if isinstance(reference, dict) else None)
    if not all(isinstance(ref, str) for ref in refs):
        return full
    value = {key: item for key, item in full.items() if key != "extension"}
    try:
        same = orjson.dumps(answer(value, refs)) == orjson.dumps(full)
    except TypeError:
        return full
    return [value, refs] if same else full


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
