"""DTR never asks a product-specific criterion on another product's order (issue 17 item 3: "never asked in DTR").

The questionnaire is one per pathway, so a criterion written for some products only (``applies_to``) sits behind a
read-only "is the order for <product>?" item that the payer prefills from the order: on another product's order its
items are never enabled.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from cds_service.dtr.prefill import prefill
from cds_service.dtr.questionnaire import build_questionnaire
from cds_service.registry import load_pack
from fhir_mappings.model import Dose, Facts, Product
from fhir_mappings.record import PatientRecord
from tests.dtr_helpers import items as dtr_items

PACK = Path(__file__).parent / "packs" / "zentorimab"
ORIGIN = "http://hl7.org/fhir/us/davinci-dtr/StructureDefinition/information-origin"
#: An askable criterion for Zentocap only, appended to I.A of a copy of the synthetic pack.
ZENTOCAP_ONLY = """
      - id: I.A.9
        text: For Zentocap requests, prior morvalide therapy;
        remedy: Record the morvalide therapy received before Zentocap.
        applies_to: {families: [zentocap]}
        predicate:
          history_of_any: {tags: [morvalide]}
"""


def _pack(tmp_path: Path) -> Any:
    folder = tmp_path / "zentorimab"
    shutil.copytree(PACK, folder)
    policy = folder / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    anchor = "\n  - id: I.B\n"
    assert anchor in text
    policy.write_text(text.replace(anchor, ZENTOCAP_ONLY + anchor, 1), encoding="utf-8")
    return load_pack(folder)


def _facts(family: str, rxcui: str) -> Facts:
    product = Product(rxcui, rxcui, family, False, 10, None, rxcui, rxcui, True)
    return Facts(
        order_ref="MedicationRequest/o1",
        evaluation_date=date(2026, 11, 20),
        product=product,
        dose=Dose(10, 1),
        age_years=50,
    )


def test_a_product_specific_criterion_is_asked_only_behind_the_order_s_product(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    pathway = next(p for p in pack.policy.pathways if p.id == "I.A")
    questionnaire, _ = build_questionnaire(pack.policy, pathway, pack.tables, "https://payer.example", "Payer")
    items = {item["linkId"]: item for item in dtr_items(questionnaire)}
    gate = items["I.A.9/applies"]
    assert gate["type"] == "boolean" and gate["readOnly"] is True and "Zentocap" in gate["text"]
    group = items["I.A.9/for"]
    assert group["enableWhen"] == [{"question": "I.A.9/applies", "operator": "=", "answerBoolean": True}]
    assert "I.A.9" in {
        item["linkId"] for item in dtr_items(group)
    }  # the history question itself only inside the gated group
    assert not any(link.startswith("I.A.8/") for link in items)  # the switch is the order's to fix: not asked


def test_the_order_answers_the_gate(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    pathway = next(p for p in pack.policy.pathways if p.id == "I.A")
    record = PatientRecord(patient_id="p1")
    capsule = prefill(pathway, _facts("zentocap", "Z1021"), record, pack.tables)
    tablet = prefill(pathway, _facts("zentora", "Z1003"), record, pack.tables)
    assert capsule["I.A.9/applies"][0]["valueBoolean"] is True
    assert tablet["I.A.9/applies"][0]["valueBoolean"] is False
    extensions = tablet["I.A.9/applies"][0]["extension"]
    assert {"url": ORIGIN, "extension": [{"url": "source", "valueCode": "auto-server"}]} in extensions
    assert [e["valueReference"] for e in extensions if "valueReference" in e] == [{"reference": "MedicationRequest/o1"}]
    unknown_product = replace(_facts("zentora", "Z1003").product, family=None)
    unclear = prefill(pathway, replace(_facts("zentora", "Z1003"), product=unknown_product), record, pack.tables)
    assert "I.A.9/applies" not in unclear  # the product cannot be told: the criterion stays asked
