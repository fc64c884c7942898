"""Issue #14 items 5, 7 and 9: morphology and body site, conflicting codes, qualifiers only text carries.

Each chart goes through the whole service (prefetch -> record filter and pruning -> facts -> policy -> card), so
what record.py keeps of a Condition (bodySite, the histology extension, note) is tested too. Expected outcomes
are reasoned from the policy text: a morphology without a site is histology only; codes that disagree leave the
criterion unknown and say so; a note phrase meets a qualifier only when it is listed, not negated and not disputed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service.config import Config
from cds_service.policy.engine import load_policy
from cds_service.service import HookHandler
from fhir_mappings.codes import CodeTables, load_code_tables
from fhir_mappings.diagnoses import HISTOLOGY_EXTENSION

from .scenarios import request_for
from .test_accuracy_rules import ICD10, NUCC, ORDER, RXNORM, SNOMED, TODAY

ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

TSC = (ICD10, "Q85.1", "Tuberous sclerosis")
RCC_C64 = (ICD10, "C64.1", "Malignant neoplasm of right kidney, except renal pelvis")
CLEAR_CELL = (ICDO3, "8310/3", "Clear cell adenocarcinoma, NOS")
PAPILLARY = (ICDO3, "8260/3", "Papillary adenocarcinoma, NOS")
SEGA = (ICDO3, "9384/1", "Subependymal giant cell astrocytoma")
C7A098 = (ICD10, "C7A.098", "Malignant carcinoid tumors of other sites")
LUNG_CARCINOID = (SNOMED, "254627002", "Carcinoid tumor of lung")
CARCINOID = (ICDO3, "8240/3", "Carcinoid tumor, NOS")
RENAL_AML = (SNOMED, "254921004", "Angiomyolipoma of kidney")
KIDNEY_SITE = (SNOMED, "64033007", "Kidney")
SECONDARY_LIVER = (SNOMED, "94381002", "Secondary malignant neoplasm of liver")


@pytest.fixture(scope="module")
def tables() -> CodeTables:
    return load_code_tables()


@pytest.fixture(scope="module")
def handler(tables: CodeTables) -> HookHandler:
    return HookHandler(Config(), tables, load_policy(vocabulary=tables), store=None, today=lambda: TODAY)


def concept(*codings: tuple[str, str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text:
        out["text"] = text
    return out


def condition(
    cid: str,
    *codings: tuple[str, str, str],
    histology: tuple[str, str, str] | None = None,
    site: tuple[str, str, str] | None = None,
    notes: tuple[str, ...] = (),
    text: str | None = None,
    verification: str = "confirmed",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": verification}]},
        "code": concept(*codings, text=text),
        "onsetDateTime": "2025-01-10",
    }
    if histology is not None:
        out["extension"] = [
            {"url": "http://example.org/unrelated", "valueString": "not read"},
            {"url": HISTOLOGY_EXTENSION, "valueCodeableConcept": concept(histology)},
        ]
    if site is not None:
        out["bodySite"] = [concept(site)]
    if notes:
        out["note"] = [{"text": n} for n in notes]
    return out


def chart(*conditions: dict[str, Any], born: str = "1970-03-01") -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "birthDate": born, "gender": "female"},
        *conditions,
        {
            "resourceType": "Coverage",
            "id": "cov1",
            "status": "active",
            "beneficiary": {"reference": "Patient/p1"},
            "payor": [{"display": "Health plan"}],
            "class": [
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]
                    },
                    "value": "COM-001",
                }
            ],
        },
        {"resourceType": "Practitioner", "id": "doc1"},
        {
            "resourceType": "PractitionerRole",
            "id": "role1",
            "practitioner": {"reference": "Practitioner/doc1"},
            "specialty": [{"coding": [{"system": NUCC, "code": "207RX0202X"}]}],
        },
    ]


def order(rxcui: str = "845507", display: str = "everolimus 10 MG Oral Tablet", mg: float = 10) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "order-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-20",
        "requester": {"reference": "PractitionerRole/role1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxcui, "display": display}]},
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg"}}],
            }
        ],
    }


def evaluate(
    handler: HookHandler, resources: list[dict[str, Any]], draft: dict[str, Any] | None = None
) -> dict[str, Any]:
    request = {
        "hook": "order-sign",
        "userId": "PractitionerRole/role1",
        "patientId": "p1",
        "resources": resources,
        "draftOrders": [draft or order()],
    }
    body = handler.handle("everolimus-order-sign", copy.deepcopy(request_for(request))).body
    for card in body["cards"]:
        ev = (card.get("extension") or {}).get("priorauth-cds.evaluation")
        if ev and ev["order"] == ORDER:
            return {**ev, "_card": card}
    raise AssertionError("no evaluation card")


def crit(ev: dict[str, Any], cid: str) -> dict[str, Any]:
    return next(c for c in ev["criteria"] if c["id"] == cid)


# ----------------------------------------------------------------------------- item 5: morphology and site


def test_sega_by_icdo3_morphology_in_the_code_meets_i_e_2_with_tsc(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("tsc", TSC), condition("sega", SEGA), born="2016-01-01"))
    assert ev["pathway"] == "I.E"
    assert crit(ev, "I.E.2")["status"] == "met"
    assert "Condition/sega" in crit(ev, "I.E.2")["evidence"]


def test_sega_by_the_mcode_histology_extension_on_an_astrocytoma(handler: HookHandler) -> None:
    astrocytoma = (SNOMED, "254938000", "Astrocytoma of brain")
    ev = evaluate(
        handler, chart(condition("tsc", TSC), condition("brain", astrocytoma, histology=SEGA), born="2016-01-01")
    )
    assert ev["pathway"] == "I.E" and crit(ev, "I.E.2")["status"] == "met"


def test_sega_morphology_without_tsc_leaves_i_e_2_unknown(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("sega", SEGA), born="2016-01-01"))
    assert ev["pathway"] == "I.E" and crit(ev, "I.E.2")["status"] == "unknown"


def test_provisional_sega_morphology_is_only_possible(handler: HookHandler) -> None:
    ev = evaluate(
        handler, chart(condition("tsc", TSC), condition("sega", SEGA, verification="provisional"), born="2016-01-01")
    )
    assert ev["pathway"] == "I.E" and crit(ev, "I.E.2")["status"] == "unknown"


def test_clear_cell_morphology_alone_is_histology_not_rcc(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("histo", CLEAR_CELL)))
    assert ev["pathway"] != "I.C"


def test_clear_cell_histology_on_a_c64_condition_is_clear_cell_rcc(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("rcc", RCC_C64, histology=CLEAR_CELL), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.C"
    assert crit(ev, "I.C.2")["status"] == "met"
    # clear cell and no prior Appendix B therapy on record: the "then" is unknown
    assert crit(ev, "I.C.6")["status"] == "unknown"


def test_clear_cell_morphology_with_a_kidney_body_site_is_rcc(handler: HookHandler) -> None:
    icdo_kidney = (ICDO3, "C64.9", "Kidney, NOS")
    ev = evaluate(handler, chart(condition("rcc", CLEAR_CELL, site=icdo_kidney), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.C" and crit(ev, "I.C.6")["status"] == "unknown"


def test_papillary_histology_of_the_kidney_makes_i_c_6_met(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("rcc", PAPILLARY, site=KIDNEY_SITE), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.C"
    assert crit(ev, "I.C.6")["status"] == "met"  # not clear cell: the "if" is not met


def test_chromophobe_morphology_is_non_clear_cell_rcc_by_itself(handler: HookHandler) -> None:
    chromophobe = (ICDO3, "8317/3", "Renal cell carcinoma, chromophobe type")
    ev = evaluate(handler, chart(condition("rcc", chromophobe), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.C" and crit(ev, "I.C.6")["status"] == "met"


def test_carcinoid_morphology_takes_its_origin_from_the_body_site(handler: HookHandler) -> None:
    lung = (SNOMED, "39607008", "Lung")
    ev = evaluate(handler, chart(condition("net", CARCINOID, site=lung), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.B"
    assert crit(ev, "I.B.2.c")["status"] == "met" and crit(ev, "I.B.2")["status"] == "met"


def test_carcinoid_morphology_without_a_site_leaves_the_origin_unknown(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("net", CARCINOID), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.B" and crit(ev, "I.B.2")["status"] == "unknown"


def test_a_generic_net_code_with_a_pancreas_site_is_pancreatic(handler: HookHandler) -> None:
    pancreas = (ICDO3, "C25.0", "Head of pancreas")
    net = (SNOMED, "255046005", "Neuroendocrine tumor")
    ev = evaluate(handler, chart(condition("net", net, site=pancreas), condition("mets", SECONDARY_LIVER)))
    assert crit(ev, "I.B.2.a")["status"] == "met"


def test_a_body_site_alone_is_not_a_diagnosis(tables: CodeTables) -> None:
    assert tables.body_site_tags("snomed", "64033007") == {"site-kidney"}
    assert tables.body_site_tags("icd-o-3", "C34.1") == {"site-lung"}
    assert tables.body_site_tags("icd-o-3", "C50.9") == frozenset()


# ----------------------------------------------------------------------------- item 7: conflicting codes


def test_carcinoid_of_other_sites_and_of_lung_in_one_condition_is_a_conflict(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("net", C7A098, LUNG_CARCINOID), condition("mets", SECONDARY_LIVER)))
    assert ev["pathway"] == "I.B"
    lung = crit(ev, "I.B.2.c")
    assert lung["status"] == "unknown"
    assert "Condition/net codes both" in lung["note"] and "C7A.098" in lung["note"] and "254627002" in lung["note"]
    assert "disagree" in lung["note"]
    assert crit(ev, "I.B.2")["status"] == "unknown"
    assert "C7A.098" in ev["_card"]["detail"]


def test_carcinoid_of_other_sites_and_of_lung_on_two_conditions_is_a_conflict(handler: HookHandler) -> None:
    ev = evaluate(
        handler,
        chart(condition("a", C7A098), condition("b", LUNG_CARCINOID), condition("mets", SECONDARY_LIVER)),
    )
    lung = crit(ev, "I.B.2.c")
    assert lung["status"] == "unknown"
    assert "Condition/a" in lung["note"] and "Condition/b" in lung["note"]


def test_an_entered_in_error_conflicting_condition_is_ignored(handler: HookHandler) -> None:
    ev = evaluate(
        handler,
        chart(
            condition("a", C7A098, verification="entered-in-error"),
            condition("b", LUNG_CARCINOID),
            condition("mets", SECONDARY_LIVER),
        ),
    )
    assert crit(ev, "I.B.2.c")["status"] == "met" and "note" not in crit(ev, "I.B.2.c")


def test_carcinoid_of_other_sites_alone_is_no_conflict(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("a", C7A098), condition("mets", SECONDARY_LIVER)))
    assert crit(ev, "I.B.2")["status"] == "unknown" and "note" not in crit(ev, "I.B.2.c")


def test_clear_cell_and_papillary_on_record_leave_the_i_c_6_if_unknown(handler: HookHandler) -> None:
    ev = evaluate(
        handler,
        chart(
            condition("rcc", RCC_C64, histology=CLEAR_CELL),
            condition("path", PAPILLARY, site=KIDNEY_SITE),
            condition("mets", SECONDARY_LIVER),
        ),
    )
    assert ev["pathway"] == "I.C"
    histology = crit(ev, "I.C.6")
    assert histology["status"] == "unknown"
    assert "Condition/rcc" in histology["note"] and "Condition/path" in histology["note"]


def test_clear_cell_and_papillary_codes_in_one_condition(handler: HookHandler) -> None:
    clear_cell_rcc = (SNOMED, "254915003", "Clear cell carcinoma of kidney")
    ev = evaluate(
        handler, chart(condition("rcc", clear_cell_rcc, histology=PAPILLARY), condition("mets", SECONDARY_LIVER))
    )
    histology = crit(ev, "I.C.6")
    assert histology["status"] == "unknown" and "Condition/rcc codes both" in histology["note"]


def test_a_conflicted_tag_is_only_possible_in_the_facts(tables: CodeTables) -> None:
    from fhir_mappings.facts import build_facts
    from fhir_mappings.record import build_record

    resources = chart(condition("net", C7A098, LUNG_CARCINOID))
    record = build_record({"chart": resources}, [order()], tables, patient_id="p1", user_ref=None)
    facts = build_facts(record, "order-1", tables, plan_prefixes={}, user_ref=None, today=TODAY)
    assert "net-lung" not in facts.diagnoses and "net-lung" in facts.possible_diagnoses
    assert "net-unspecified-origin" in facts.diagnoses
    (conflict,) = facts.diagnosis_conflicts["net-lung"]
    assert conflict.tags == ("net-lung", "net-other-origin") and conflict.evidence == ("Condition/net",)


# ----------------------------------------------------------------------------- item 9: qualifiers in text


def aml_chart(*notes: str, text: str | None = None) -> list[dict[str, Any]]:
    return chart(condition("tsc", TSC), condition("aml", RENAL_AML, notes=notes, text=text))


def test_no_immediate_surgery_in_a_note_meets_i_d_2_and_is_quoted(handler: HookHandler) -> None:
    ev = evaluate(
        handler, aml_chart("Bilateral AMLs up to 4 cm. Stable, not requiring immediate surgery at this time.")
    )
    assert ev["pathway"] == "I.D"
    d2 = crit(ev, "I.D.2")
    assert d2["status"] == "met"
    assert d2["note"] == "Condition/aml note: 'Stable, not requiring immediate surgery at this time.'"
    assert "not requiring immediate surgery" in ev["_card"]["detail"]


def test_the_qualifier_in_the_code_text_counts(handler: HookHandler) -> None:
    ev = evaluate(handler, aml_chart(text="Renal angiomyolipoma; immediate surgery is not required"))
    assert crit(ev, "I.D.2")["status"] == "met"


def test_requiring_immediate_surgery_is_no_match_and_is_quoted(handler: HookHandler) -> None:
    ev = evaluate(handler, aml_chart("Enlarging 9 cm lesion, requires immediate surgery (embolization)"))
    d2 = crit(ev, "I.D.2")
    assert d2["status"] == "unknown"
    assert "requires immediate surgery" in d2["note"]


def test_a_negated_phrase_is_no_match(handler: HookHandler) -> None:
    ev = evaluate(handler, aml_chart("No documentation that the lesion is not requiring immediate surgery"))
    d2 = crit(ev, "I.D.2")
    assert d2["status"] == "unknown" and "note" not in d2


def test_affirmed_and_contrary_notes_leave_it_unknown(handler: HookHandler) -> None:
    ev = evaluate(handler, aml_chart("2024: not requiring immediate surgery.", "2026: now requires immediate surgery."))
    d2 = crit(ev, "I.D.2")
    assert d2["status"] == "unknown" and "requires immediate surgery" in d2["note"]


def test_a_phrase_on_another_diagnosis_does_not_count(handler: HookHandler) -> None:
    tsc = condition("tsc", TSC, notes=("Cortical tubers, not requiring immediate surgery",))
    ev = evaluate(handler, chart(tsc, condition("aml", RENAL_AML)))
    assert ev["pathway"] == "I.D"
    assert crit(ev, "I.D.2")["status"] == "unknown"


def test_unresectable_in_a_note_meets_i_c_2_without_coded_metastases(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("rcc", RCC_C64, notes=("Stage IV clear cell RCC, unresectable.",))))
    assert ev["pathway"] == "I.C"
    assert crit(ev, "I.C.2")["status"] == "met"
    assert "unresectable" in crit(ev, "I.C.2")["note"]


@pytest.mark.parametrize(
    "note", ["Tumor is not unresectable.", "Localized tumor, resectable; nephrectomy planned", "Surgery discussed"]
)
def test_i_c_2_stays_unknown_without_an_unnegated_listed_phrase(handler: HookHandler, note: str) -> None:
    ev = evaluate(handler, chart(condition("rcc", RCC_C64, notes=(note,))))
    assert crit(ev, "I.C.2")["status"] == "unknown"


def test_locally_advanced_net_meets_i_b_3(handler: HookHandler) -> None:
    pnet = (ICD10, "C25.4", "Malignant neoplasm of endocrine pancreas")
    ev = evaluate(handler, chart(condition("net", pnet, notes=("Locally advanced pancreatic NET",))))
    assert ev["pathway"] == "I.B" and crit(ev, "I.B.3")["status"] == "met"


def test_locally_advanced_is_not_stage_iv_rcc(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("rcc", RCC_C64, notes=("Locally advanced RCC",))))
    assert crit(ev, "I.C.2")["status"] == "unknown"


def test_recurrent_angiomyolipoma_meets_the_qualifier_of_i_h_2_a_ii(tables: CodeTables) -> None:
    from cds_service.policy.engine import evaluate_pathway
    from fhir_mappings.facts import build_facts
    from fhir_mappings.record import build_record

    policy = load_policy(vocabulary=tables)
    aml = (SNOMED, "254921004", "Angiomyolipoma of kidney")
    for note, expected in (("Recurrent angiomyolipoma after embolization", "met"), ("No recurrence", "unknown")):
        resources = chart(condition("aml", aml, notes=(note,)))
        record = build_record({"chart": resources}, [order()], tables, patient_id="p1", user_ref=None)
        facts = build_facts(record, "order-1", tables, plan_prefixes={}, user_ref=None, today=TODAY)
        result = evaluate_pathway(policy, "I.H", facts)
        found = next(c for top in result.criteria for c in top.walk() if c.id == "I.H.2.a.ii")
        assert found.status.value == expected, note


def test_the_record_keeps_body_site_note_and_only_the_histology_extension(tables: CodeTables) -> None:
    from fhir_mappings.record import build_record

    kept = condition("rcc", RCC_C64, histology=CLEAR_CELL, site=KIDNEY_SITE, notes=("unresectable",))
    only_histology = condition("histo", histology=SEGA)  # no code at all: relevant through its extension
    del only_histology["code"]
    record = build_record({"chart": chart(kept, only_histology)}, [order()], tables, patient_id="p1", user_ref=None)
    by_id = {c.id: c for c in record.conditions}
    assert set(by_id) == {"rcc", "histo"}
    assert [e.url for e in by_id["rcc"].extension or []] == [HISTOLOGY_EXTENSION]
    assert by_id["rcc"].bodySite and by_id["rcc"].note


FALLBACK_CHARTS = {
    "conflict": chart(condition("net", C7A098, LUNG_CARCINOID), condition("mets", SECONDARY_LIVER)),
    "note": aml_chart("Asymptomatic; not requiring immediate surgery."),
    "histology": chart(
        condition("rcc", RCC_C64, histology=PAPILLARY, site=KIDNEY_SITE), condition("mets", SECONDARY_LIVER)
    ),
}


@pytest.mark.parametrize("name", sorted(FALLBACK_CHARTS))
def test_fallback_queries_read_the_same_morphology_conflicts_and_notes(client: Any, name: str) -> None:
    """No prefetch: the service queries a FHIR server for the Conditions and reaches the same answer and notes."""
    import secrets

    from .fhir_server import start_fhir_server

    token = secrets.token_urlsafe(16)
    sc = {
        "hook": "order-sign",
        "userId": "PractitionerRole/role1",
        "patientId": "p1",
        "resources": FALLBACK_CHARTS[name],
        "draftOrders": [order()],
    }
    sign = "/cds-services/everolimus-order-sign"
    with start_fhir_server(FALLBACK_CHARTS[name], token) as server:
        fallback = client.post(sign, json=request_for(sc, prefetch=False, fhir_server=server.base_url, token=token))
    assert fallback.status_code == 200
    prefetched = client.post(sign, json=request_for(sc)).get_json()

    def criteria(body: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
        (ev,) = [c["extension"]["priorauth-cds.evaluation"] for c in body["cards"] if "extension" in c]
        return {c["id"]: (c["status"], c.get("note")) for c in ev["criteria"]}

    got, want = criteria(fallback.get_json()), criteria(prefetched)
    assert got == want
    cid, status = {"conflict": ("I.B.2.c", "unknown"), "note": ("I.D.2", "met"), "histology": ("I.C.6", "met")}[name]
    assert got[cid][0] == status


def test_malignant_and_benign_kidney_codes_on_one_condition_disagree(handler: HookHandler) -> None:
    ev = evaluate(handler, chart(condition("tsc", TSC), condition("kidney", RCC_C64, RENAL_AML)))
    assert ev["pathway"] in ("I.C", "I.D")
    diagnosis = crit(ev, "I.C.2" if ev["pathway"] == "I.C" else "I.D.2")
    assert diagnosis["status"] == "unknown" and "Condition/kidney codes both" in diagnosis["note"]


def test_rcc_and_renal_aml_on_two_conditions_are_two_tumours(handler: HookHandler) -> None:
    """A member with TSC may have both: only one Condition coding both is a contradiction (scope condition)."""
    ev = evaluate(
        handler,
        chart(
            condition("tsc", TSC),
            condition("rcc", RCC_C64),
            condition("aml", RENAL_AML, notes=("not requiring immediate surgery",)),
        ),
    )
    assert ev["pathway"] == "I.D" and crit(ev, "I.D.2")["status"] == "met"


def test_a_clean_condition_keeps_a_tag_another_condition_disputes(tables: CodeTables) -> None:
    from fhir_mappings.facts import build_facts
    from fhir_mappings.record import build_record

    resources = chart(condition("both", RCC_C64, RENAL_AML), condition("aml", RENAL_AML))
    record = build_record({"chart": resources}, [order()], tables, patient_id="p1", user_ref=None)
    facts = build_facts(record, "order-1", tables, plan_prefixes={}, user_ref=None, today=TODAY)
    assert facts.diagnoses["renal-angiomyolipoma"].evidence == ("Condition/aml",)
    assert "rcc" not in facts.diagnoses and facts.possible_diagnoses["rcc"].evidence == ("Condition/both",)


@pytest.mark.parametrize(
    "system,code",
    [(ICDO3, "9384/1"), (ICDO3, "M-9384/1"), (ICDO3, "93841"), ("urn:oid:2.16.840.1.113883.6.43.1", "9384/1")],
)
def test_icdo3_codes_as_ehrs_write_them(tables: CodeTables, system: str, code: str) -> None:
    from fhir_mappings.facts import build_facts
    from fhir_mappings.record import build_record

    resources = chart(condition("sega", (system, code, "SEGA")))
    record = build_record({"chart": resources}, [order()], tables, patient_id="p1", user_ref=None)
    facts = build_facts(record, "order-1", tables, plan_prefixes={}, user_ref=None, today=TODAY)
    assert facts.diagnoses["sega"].evidence == ("Condition/sega",)


@pytest.mark.parametrize(
    "site,tag",
    [
        ((ICDO3, "C649", "Kidney"), None),
        ((SNOMED, "66754008", "Appendix"), "net-gi"),
        ((SNOMED, "955009", "Bronchus"), "net-lung"),
    ],
)
def test_carcinoid_sites(tables: CodeTables, site: tuple[str, str, str], tag: str | None) -> None:
    from fhir_mappings.facts import build_facts
    from fhir_mappings.record import build_record

    resources = chart(condition("net", CARCINOID, site=site))
    record = build_record({"chart": resources}, [order()], tables, patient_id="p1", user_ref=None)
    facts = build_facts(record, "order-1", tables, plan_prefixes={}, user_ref=None, today=TODAY)
    origins = {"net-gi", "net-lung", "net-pancreas", "net-thymus"} & set(facts.diagnoses)
    assert origins == ({tag} if tag else set())


@pytest.mark.parametrize(
    "note,met",
    [
        ("No need for immediate surgery.", True),
        ("Immediate surgery is not indicated", True),
        ("Lesion does not need immediate surgery", True),
        ("Hemorrhage risk: needs immediate surgery", False),
        ("No obvious need for immediate surgery", False),  # negated contrary: neither way
        ("AML 3 cm, Immediate Surgery Not Required", True),
    ],
)
def test_no_immediate_surgery_wordings(handler: HookHandler, note: str, met: bool) -> None:
    ev = evaluate(handler, aml_chart(note))
    assert crit(ev, "I.D.2")["status"] == ("met" if met else "unknown")
