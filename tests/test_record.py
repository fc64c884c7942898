"""Building the typed PatientRecord: routing, filtering, repairs, drops, and who the data is about."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest

from fhir_mappings.codes import CodeTables, load_code_tables
from fhir_mappings.record import PatientRecord, build_record
from tests.scenarios import external_dir

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.fixture(scope="module")
def tables() -> CodeTables:
    return load_code_tables()


def condition(cid: str, code: str, patient: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": ICD10CM, "code": code}]},
        **extra,
    }


def med_request(mid: str, rxcui: str | None, text: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if rxcui:
        concept["coding"] = [{"system": RXNORM, "code": rxcui, "display": text}]
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": concept,
        **extra,
    }


def everolimus_draft(mid: str = "d1", **extra: Any) -> dict[str, Any]:
    return med_request(
        mid,
        "845507",
        "everolimus 10 MG Oral Tablet",
        status="draft",
        authoredOn="2026-11-20",
        requester={"reference": "PractitionerRole/r1"},
        dosageInstruction=[
            {
                "text": "10 mg daily",
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
            }
        ],
        **extra,
    )


def build(
    resources: dict[str, Any],
    drafts: list[dict[str, Any]] | None = None,
    tables: CodeTables | None = None,
    **kwargs: Any,
) -> PatientRecord:
    kwargs.setdefault("patient_id", "p1")
    return build_record(
        resources, drafts if drafts is not None else [everolimus_draft()], tables or load_code_tables(), **kwargs
    )


def test_routes_by_resource_type_whatever_the_key(tables: CodeTables) -> None:
    record = build(
        {
            "anything": [{"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}],
            "observations": [condition("c1", "C50.912")],  # wrong key, right type
            "bundle": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": condition("c2", "C78.7")}, {"search": {"mode": "outcome"}}],
            },
            "single": condition("c3", "Q85.1"),
            "unknownType": [{"resourceType": "Encounter", "id": "e1"}],
        },
        tables=tables,
    )
    assert record.patient is not None and record.patient.id == "p1"
    assert sorted(c.id for c in record.conditions) == ["c1", "c2", "c3"]


def test_dedupes_by_type_and_id(tables: CodeTables) -> None:
    record = build({"a": [condition("c1", "C50.912")], "b": [condition("c1", "C50.912")]}, tables=tables)
    assert [c.id for c in record.conditions] == ["c1"]


def test_filters_what_the_policy_does_not_read(tables: CodeTables) -> None:
    record = build(
        {
            "all": [
                condition("hypertension", "I10"),
                condition("breast", "C50.912"),
                condition("er-status", "Z17.0"),
                {
                    "resourceType": "Condition",
                    "id": "staged",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"text": "cancer"},
                    "stage": [{"summary": {"coding": [{"system": "http://snomed.info/sct", "code": "258228008"}]}}],
                },
                {
                    "resourceType": "Observation",
                    "id": "creat",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
                },
                {
                    "resourceType": "Observation",
                    "id": "er",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "16112-5"}]},
                },
                {
                    "resourceType": "Observation",
                    "id": "panel",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"text": "breast panel"},
                    "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "48676-1"}]}}],
                },
                med_request("amlodipine", "197361", "amlodipine 5 MG Oral Tablet"),
                med_request("letrozole", "72965", "letrozole"),
                med_request("by-name", None, "Femara 2.5 mg"),
                {
                    "resourceType": "AllergyIntolerance",
                    "id": "penicillin",
                    "patient": {"reference": "Patient/p1"},
                    "code": {"text": "penicillin"},
                },
                {
                    "resourceType": "AllergyIntolerance",
                    "id": "evero",
                    "patient": {"reference": "Patient/p1"},
                    "code": {"text": "Everolimus"},
                },
            ]
        },
        tables=tables,
    )
    assert sorted(c.id for c in record.conditions) == ["breast", "er-status", "staged"]
    assert sorted(o.id for o in record.observations) == ["er", "panel"]
    assert sorted(m.id for m in record.medication_requests) == ["by-name", "letrozole"]
    assert [a.id for a in record.allergies] == ["evero"]


def test_keeps_only_the_elements_read(tables: CodeTables) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1970-01-01",
        "name": [{"family": "Secret", "given": ["Name"]}],
        "telecom": [{"system": "phone", "value": "555"}],
    }
    record = build({"p": [patient]}, tables=tables)
    assert record.patient is not None
    assert record.patient.name is None and record.patient.telecom is None
    assert str(record.patient.birthDate) == "1970-01-01"


def test_invalid_entries_are_dropped_without_values(tables: CodeTables) -> None:
    bad_condition = condition("c-bad", "C50.912", onsetDateTime="SECRET-NOT-A-DATE")
    no_subject = condition("c-nosubj", "C50.912")
    del no_subject["subject"]
    record = build(
        {
            "all": [
                bad_condition,
                no_subject,
                condition("c-ok", "C50.912"),
                {"resourceType": "Condition", "code": {"text": "x"}},
            ]
        },
        tables=tables,
    )
    assert [c.id for c in record.conditions] == ["c-ok"]
    assert any(d.startswith("Condition/c-bad: onsetDateTime") for d in record.dropped)
    assert any(d.startswith("Condition/c-nosubj: subject: missing") for d in record.dropped)
    assert "Condition: no id" in record.dropped
    assert not any("SECRET" in d for d in record.dropped)


def test_other_patients_entries_are_ignored(tables: CodeTables) -> None:
    record = build(
        {
            "all": [
                {"resourceType": "Patient", "id": "p2", "birthDate": "1990-01-01"},
                {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"},
                condition("mine", "C50.912"),
                condition("theirs", "C50.912", patient="p2"),
                condition("absolute-mine", "C50.912", subject={"reference": "https://ehr.example/fhir/Patient/p1"}),
                condition("by-identifier", "C50.912", subject={"identifier": {"value": "MRN1"}}),
                {
                    "resourceType": "Coverage",
                    "id": "cov-other",
                    "status": "active",
                    "beneficiary": {"reference": "Patient/p2"},
                    "payor": [{"display": "x"}],
                },
            ]
        },
        tables=tables,
    )
    assert record.patient is not None and record.patient.id == "p1"
    assert sorted(c.id for c in record.conditions) == ["absolute-mine", "by-identifier", "mine"]
    assert set(record.ignored) == {
        "Patient/p2: other patient",
        "Condition/theirs: other patient",
        "Coverage/cov-other: other patient",
    }
    assert record.coverages == ()


def test_without_patient_id_nothing_is_ignored(tables: CodeTables) -> None:
    record = build({"all": [condition("a", "C50.912", patient="p9")]}, tables=tables, patient_id=None)
    assert [c.id for c in record.conditions] == ["a"] and record.ignored == ()


# ----------------------------------------------------------------------------- repairs


def test_sandbox_draft_with_single_category_validates(tables: CodeTables) -> None:
    payload = json.loads((external_dir() / "sandbox-captured-order-sign-with-medication.json").read_text())
    drafts = payload["context"]["draftOrders"]
    record = build_record({}, [drafts], tables, patient_id=payload["context"]["patientId"])
    assert [d.id for d in record.draft_orders] == ["request-123"]
    assert record.dropped == ()


def test_single_objects_where_r4_has_arrays_are_wrapped(tables: CodeTables) -> None:
    draft = everolimus_draft(
        reasonCode={"coding": [{"system": ICD10CM, "code": "C50.912"}]}, insurance={"reference": "Coverage/c1"}
    )
    draft["dosageInstruction"] = draft["dosageInstruction"][0]
    draft["dosageInstruction"]["doseAndRate"] = draft["dosageInstruction"]["doseAndRate"][0]
    original = copy.deepcopy(draft)
    record = build({}, [draft], tables=tables)
    (order,) = record.draft_orders
    assert isinstance(order, MedicationRequest)
    assert order.reasonCode[0].coding[0].code == "C50.912"
    assert order.insurance[0].reference == "Coverage/c1"
    assert order.dosageInstruction[0].doseAndRate[0].doseQuantity.value == 10
    assert draft == original  # the caller's data is untouched
    notes = " ".join(record.repaired)
    assert "reasonCode wrapped" in notes and "doseAndRate wrapped" in notes


def test_stu3_dose_quantity_is_moved_into_dose_and_rate(tables: CodeTables) -> None:
    draft = everolimus_draft()
    draft["dosageInstruction"] = [
        {
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "doseQuantity": {"value": 5, "unit": "mg"},
        }
    ]
    record = build({}, [draft], tables=tables)
    (order,) = record.draft_orders
    assert order.dosageInstruction[0].doseAndRate[0].doseQuantity.value == 5
    assert any("STU3" in note for note in record.repaired)


def test_r5_medication_codeable_reference_is_converted(tables: CodeTables) -> None:
    draft = everolimus_draft()
    concept = draft.pop("medicationCodeableConcept")
    draft["medication"] = {"concept": concept}
    record = build({}, [draft], tables=tables)
    (order,) = record.draft_orders
    assert order.medicationCodeableConcept.coding[0].code == "845507"


def test_unknown_nested_element_is_dropped_and_reported(tables: CodeTables) -> None:
    cond = condition("c1", "C50.912")
    cond["code"]["coding"][0]["vendorRank"] = 1
    record = build({"all": [cond]}, tables=tables)
    assert [c.id for c in record.conditions] == ["c1"]
    assert any("unknown element code.coding.0.vendorRank dropped" in n for n in record.repaired)


def test_invalid_everolimus_draft_is_dropped_and_reported_like_any_entry(tables: CodeTables) -> None:
    draft = everolimus_draft()
    del draft["subject"]
    other = med_request("d2", "72965", "letrozole", status="draft")
    del other["subject"]
    bad_status = everolimus_draft("d3")
    bad_status["status"] = 5
    valid = everolimus_draft("d4")
    record = build({}, [draft, other, bad_status, valid], tables=tables)
    assert [d.id for d in record.draft_orders] == ["d4"]
    assert record.draft("MedicationRequest/d1") is None and record.draft("d3") is None
    assert record.draft("d4") is record.draft_orders[0]
    # Reported once each, with the element and the error kind only, exactly like a prefetch entry.
    assert sorted(record.dropped) == [
        "MedicationRequest/d1: subject: missing",
        "MedicationRequest/d2: subject: missing",
        "MedicationRequest/d3: status: string_type",
    ]
    assert record.dropped_reason("MedicationRequest/d1") == "subject: missing"
    assert record.dropped_reason("MedicationRequest/d3") == "status: string_type"
    assert record.dropped_reason("MedicationRequest/d4") is None


def test_invalid_draft_is_reported_the_same_way_as_the_same_prefetch_entry(tables: CodeTables) -> None:
    broken = med_request("m1", "72965", "letrozole", status="active")
    del broken["subject"]
    from_prefetch = build({"meds": [broken]}, tables=tables)
    as_draft = build({}, [broken], tables=tables)
    assert from_prefetch.dropped == as_draft.dropped == ("MedicationRequest/m1: subject: missing",)


def test_drafts_of_unknown_medications_are_not_kept(tables: CodeTables) -> None:
    payload = json.loads((external_dir() / "inferno-order_sign_hook_request.json").read_text())
    record = build_record({}, [payload["context"]["draftOrders"]], tables, patient_id="example")
    assert record.draft_orders == () and record.dropped == ()


# ----------------------------------------------------------------------------- references


def test_medication_reference_to_contained_and_bundled_medication(tables: CodeTables) -> None:
    contained = med_request("m1", None, "ignored")
    del contained["medicationCodeableConcept"]
    contained["medicationReference"] = {"reference": "#med"}
    contained["contained"] = [
        {"resourceType": "Medication", "id": "med", "code": {"coding": [{"system": RXNORM, "code": "72965"}]}}
    ]
    bundled = med_request("m2", None, "ignored")
    del bundled["medicationCodeableConcept"]
    bundled["medicationReference"] = {"reference": "Medication/tam"}
    record = build(
        {
            "meds": [
                contained,
                bundled,
                {
                    "resourceType": "Medication",
                    "id": "tam",
                    "code": {"coding": [{"system": RXNORM, "code": "10324", "display": "tamoxifen"}]},
                },
                {"resourceType": "Medication", "id": "unused", "code": {"text": "x"}},
            ]
        },
        tables=tables,
    )
    assert sorted(m.id for m in record.medication_requests) == ["m1", "m2"]
    assert list(record.medications) == ["Medication/tam"]


def test_requester_roles_and_practitioners(tables: CodeTables) -> None:
    people = [
        {"resourceType": "PractitionerRole", "id": "r1", "practitioner": {"reference": "Practitioner/doc"}},
        {"resourceType": "PractitionerRole", "id": "r2", "practitioner": {"reference": "Practitioner/doc"}},
        {"resourceType": "PractitionerRole", "id": "r3", "practitioner": {"reference": "Practitioner/other"}},
        {"resourceType": "Practitioner", "id": "doc"},
        {"resourceType": "Practitioner", "id": "other"},
    ]
    record = build({"people": people}, tables=tables)
    assert sorted(record.practitioner_roles) == ["r1", "r2"]
    assert sorted(record.practitioners) == ["doc"]
    by_user = build({"people": people}, drafts=[], tables=tables, user_ref="Practitioner/other")
    assert sorted(by_user.practitioner_roles) == ["r3"] and sorted(by_user.practitioners) == ["other"]


def test_chart_copy_of_a_draft_is_not_counted_twice(tables: CodeTables) -> None:
    record = build({"meds": [everolimus_draft()]}, tables=tables)
    assert [d.id for d in record.draft_orders] == ["d1"]
    assert record.medication_requests == ()


def test_without_any_requester_every_role_is_kept(tables: CodeTables) -> None:
    order = everolimus_draft()
    del order["requester"]
    people = [
        {"resourceType": "PractitionerRole", "id": "user-role", "practitioner": {"reference": "Practitioner/u"}},
        {"resourceType": "Practitioner", "id": "u"},
    ]
    record = build({"people": people}, drafts=[order], tables=tables)
    assert sorted(record.practitioner_roles) == ["user-role"] and sorted(record.practitioners) == ["u"]
