"""Benchmark workloads: an acceptance scenario's chart padded with the filler a real chart carries.

A real patient's chart is mostly things the policy never reads: vitals, routine labs, chronic
problems, and medications the code tables do not know. The typical order-sign request here is the
acceptance scenario ``A-met-generic-with-exemestane`` (10 prefetched resources, an everolimus draft and
an exemestane draft) plus 40 such resources; the chart-size series pads the same scenario to 10, 100,
1000 and 5000 resources. About one filler resource in thirty repeats something the policy does read
(an encounter diagnosis of the same breast cancer, an older receptor result with the same value), as a
long chart does, so the validated part grows with the chart too. ``check_filler`` proves that none of
the "unknown" filler codes is in the code tables and that filler does not change any decision.

The filler codes are ordinary LOINC / ICD-10-CM / SNOMED CT / RxNorm codes chosen to look like a
chart; they are benchmark data, not terminology the service relies on.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The shared acceptance scenarios: ``$PRIORAUTH_SHARED_DIR`` (as the tests read it), else ``shared`` beside the repo.
SCENARIO_DIR = (
    Path(os.environ.get("PRIORAUTH_SHARED_DIR", "").strip() or ROOT.parent / "shared") / "acceptance" / "scenarios"
)
BASE_SCENARIO = "A-met-generic-with-exemestane"
TYPICAL_SIZE = 50
CHART_SIZES = (10, 100, 1000, 5000)
#: Charts where every resource is one the policy reads (``read_chart``): the acceptance request's own, then 50, 100.
READ_SIZES = (50, 100)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: (LOINC, display, value, UCUM unit) of vital signs.
VITALS = (
    ("8867-4", "Heart rate", 72, "/min"),
    ("9279-1", "Respiratory rate", 16, "/min"),
    ("8310-5", "Body temperature", 36.8, "Cel"),
    ("29463-7", "Body weight", 68.2, "kg"),
    ("8302-2", "Body height", 165, "cm"),
    ("39156-5", "Body mass index (BMI) [Ratio]", 25.1, "kg/m2"),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", 98, "%"),
)
#: (LOINC, display, value, UCUM unit) of routine laboratory results.
LABS = (
    ("718-7", "Hemoglobin [Mass/volume] in Blood", 12.9, "g/dL"),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", 6.1, "10*3/uL"),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", 245, "10*3/uL"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", 98, "mg/dL"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", 0.9, "mg/dL"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", 4.2, "mmol/L"),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", 139, "mmol/L"),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", 22, "U/L"),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", 187, "mg/dL"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 5.6, "%"),
)
#: (ICD-10-CM, SNOMED CT, display) of chronic problems the policy does not read.
PROBLEMS = (
    ("I10", "38341003", "Essential (primary) hypertension"),
    ("E78.5", "55822004", "Hyperlipidemia, unspecified"),
    ("K21.9", "235595009", "Gastro-esophageal reflux disease without esophagitis"),
    ("F41.1", "21897009", "Generalized anxiety disorder"),
    ("E03.9", "40930008", "Hypothyroidism, unspecified"),
    ("M54.50", "279039007", "Low back pain, unspecified"),
    ("G47.33", "78275009", "Obstructive sleep apnea (adult) (pediatric)"),
)
#: (RxNorm, display) of medications no code table lists.
MEDICATIONS = (
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("617310", "atorvastatin 20 MG Oral Tablet"),
    ("861007", "metformin hydrochloride 500 MG Oral Tablet"),
    ("198440", "acetaminophen 500 MG Oral Tablet"),
)


def load_scenario(name: str = BASE_SCENARIO) -> dict[str, Any]:
    """One shared acceptance scenario (chart, drafts, user, expected evaluation)."""
    scenario: dict[str, Any] = json.loads((SCENARIO_DIR / f"{name}.json").read_text())
    return scenario


def _reference(patient_id: str) -> dict[str, str]:
    return {"reference": f"Patient/{patient_id}"}


def _meta(day: date) -> dict[str, Any]:
    return {"versionId": "1", "lastUpdated": f"{day.isoformat()}T09:30:00Z", "source": "#ehr-bench"}


def _quantity_observation(
    rid: str, patient: str, day: date, row: tuple[str, str, float, str], category: str
) -> dict[str, Any]:
    code, display, value, unit = row
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": _meta(day),
        "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.798268", "value": rid}],
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": _reference(patient),
        "encounter": {"reference": f"Encounter/{patient}-enc-{day.isoformat()}"},
        "effectiveDateTime": f"{day.isoformat()}T09:15:00Z",
        "issued": f"{day.isoformat()}T10:02:00Z",
        "performer": [{"reference": "Organization/bench-lab", "display": "Hospital laboratory"}],
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "referenceRange": [{"text": "within normal limits"}],
    }


def _blood_pressure(rid: str, patient: str, day: date) -> dict[str, Any]:
    resource = _quantity_observation(rid, patient, day, ("85354-9", "Blood pressure panel", 0, "mm[Hg]"), "vital-signs")
    del resource["valueQuantity"]
    resource["component"] = [
        {
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
        }
        for code, display, value in (
            ("8480-6", "Systolic blood pressure", 128),
            ("8462-4", "Diastolic blood pressure", 79),
        )
    ]
    return resource


def _problem(rid: str, patient: str, day: date, row: tuple[str, str, str]) -> dict[str, Any]:
    icd, sct, display = row
    return {
        "resourceType": "Condition",
        "id": rid,
        "meta": _meta(day),
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": ICD10, "code": icd, "display": display},
                {"system": SNOMED, "code": sct, "display": display},
            ],
            "text": display,
        },
        "subject": _reference(patient),
        "onsetDateTime": day.isoformat(),
        "recordedDate": day.isoformat(),
        "recorder": {"reference": "Practitioner/bench-pcp"},
    }


def _medication(rid: str, patient: str, day: date, row: tuple[str, str], statement: bool) -> dict[str, Any]:
    rxcui, display = row
    common: dict[str, Any] = {
        "id": rid,
        "meta": _meta(day),
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": rxcui, "display": display}],
            "text": display,
        },
        "subject": _reference(patient),
    }
    dosage = {
        "sequence": 1,
        "text": "1 tablet by mouth once daily",
        "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
        "route": {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]},
        "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet", "system": UCUM, "code": "{tbl}"}}],
    }
    if statement:
        return {
            "resourceType": "MedicationStatement",
            **common,
            "status": "active",
            "effectivePeriod": {"start": day.isoformat()},
            "dateAsserted": day.isoformat(),
            "dosage": [dosage],
        }
    return {
        "resourceType": "MedicationRequest",
        **common,
        "status": "active",
        "intent": "order",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "code": "outpatient"}
                ]
            }
        ],
        "authoredOn": day.isoformat(),
        "requester": {"reference": "Practitioner/bench-pcp"},
        "dosageInstruction": [dosage],
        "dispenseRequest": {
            "numberOfRepeatsAllowed": 3,
            "quantity": {"value": 90, "unit": "tablet"},
            "expectedSupplyDuration": {"value": 90, "unit": "days", "system": UCUM, "code": "d"},
        },
    }


def _relevant_repeat(rid: str, patient: str, day: date, base: dict[str, Any], n: int) -> dict[str, Any]:
    """An older copy of a chart resource the policy reads (same code and value), as a long chart repeats them."""
    pool = [r for r in base["resources"] if r["resourceType"] in ("Condition", "Observation")]
    resource: dict[str, Any] = copy.deepcopy(pool[n % len(pool)])
    resource["id"] = rid
    resource["meta"] = _meta(day)
    for key in ("effectiveDateTime", "recordedDate"):
        if key in resource:
            resource[key] = day.isoformat()
    return resource


def _filler(patient: str, base: dict[str, Any], count: int, end: date) -> Iterator[dict[str, Any]]:
    """``count`` filler resources, newest first, one clinic visit every 9 days going back from ``end``."""
    kinds = itertools.cycle(
        [
            "vital",
            "lab",
            "vital",
            "lab",
            "bp",
            "lab",
            "problem",
            "request",
            "lab",
            "statement",
            "vital",
            "lab",
            "lab",
            "request",
            "vital",
            "lab",
            "bp",
            "lab",
            "vital",
            "problem",
            "lab",
            "vital",
            "lab",
            "statement",
            "lab",
            "vital",
            "request",
            "lab",
            "vital",
            "repeat",
        ]
    )
    for n, kind in zip(range(count), kinds):
        day = end - timedelta(days=9 * (n // 10) + 1)
        rid = f"bench-{kind}-{n}"
        if kind == "vital":
            yield _quantity_observation(rid, patient, day, VITALS[n % len(VITALS)], "vital-signs")
        elif kind == "lab":
            yield _quantity_observation(rid, patient, day, LABS[n % len(LABS)], "laboratory")
        elif kind == "bp":
            yield _blood_pressure(rid, patient, day)
        elif kind == "problem":
            yield _problem(rid, patient, day, PROBLEMS[n % len(PROBLEMS)])
        elif kind in ("request", "statement"):
            yield _medication(rid, patient, day, MEDICATIONS[n % len(MEDICATIONS)], kind == "statement")
        else:
            yield _relevant_repeat(rid, patient, day, base, n)


def prefetched_chart(base: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's resources that a prefetch carries (our templates have no Organization key)."""
    from tests.scenarios import KEY_FOR_TYPE

    return [r for r in base["resources"] if r["resourceType"] in KEY_FOR_TYPE]


def chart(size: int, base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The base scenario's prefetched chart padded with filler to exactly ``size`` resources."""
    base = base or load_scenario()
    core = prefetched_chart(base)
    if size < len(core):
        raise ValueError(f"a chart needs at least {len(core)} resources (the scenario's own)")
    end = date.fromisoformat(base["draftOrders"][0]["authoredOn"])
    return core + list(_filler(base["patientId"], base, size - len(core), end))


def read_chart(size: int, base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The base scenario's prefetched chart padded to ``size`` with resources the policy reads, and only those.

    Every added resource is an older copy of one of the scenario's Conditions or Observations (the breast cancer
    diagnosis, a receptor result): each survives routing, relevance and pruning and is validated, so the cost per
    added resource is the cost of validation and fact reading, with nothing pruned away.
    """
    base = base or load_scenario()
    core = prefetched_chart(base)
    if size < len(core):
        raise ValueError(f"a chart needs at least {len(core)} resources (the scenario's own)")
    end = date.fromisoformat(base["draftOrders"][0]["authoredOn"])
    patient = base["patientId"]
    added = [
        _relevant_repeat(f"bench-read-{n}", patient, end - timedelta(days=9 * (n // 5) + 1), base, n)
        for n in range(size - len(core))
    ]
    return core + added


def hook_request(size: int, base: dict[str, Any] | None = None, *, read: bool = False) -> dict[str, Any]:
    """An order-sign request for the base scenario with a ``size``-resource chart in prefetch (``read``: every
    added resource is one the policy reads, ``read_chart``; otherwise the filler of ``chart``)."""
    from tests.scenarios import prefetch_for, request_for

    base = base or load_scenario()
    request = request_for(base, prefetch=False)
    label = f"read-{size}" if read else str(size)
    request["hookInstance"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"priorauth-cds-bench/{label}"))
    request["prefetch"] = prefetch_for(read_chart(size, base) if read else chart(size, base))
    return request


def acceptance_size(base: dict[str, Any] | None = None) -> int:
    """How many prefetched resources the acceptance request itself carries (the scenario's own chart)."""
    return len(prefetched_chart(base or load_scenario()))


def filler_codes() -> dict[str, list[str]]:
    """The "unknown" filler codes by code system name, for ``check_filler``."""
    return {
        "loinc": [row[0] for row in (*VITALS, *LABS)] + ["85354-9", "8480-6", "8462-4"],
        "icd-10-cm": [row[0] for row in PROBLEMS],
        "snomed": [row[1] for row in PROBLEMS],
        "rxnorm": [row[0] for row in MEDICATIONS],
    }


def _verdict(body: dict[str, Any]) -> list[tuple[str, str, str, tuple[tuple[str, str], ...]]]:
    """Per evaluated order: pathway, decision and criterion statuses (evidence lists grow with the chart)."""
    out = []
    for card in body.get("cards", []):
        ev = (card.get("extension") or {}).get("priorauth-cds.evaluation")
        if ev:
            criteria = tuple((c["id"], c["status"]) for c in ev.get("criteria", []))
            out.append((ev["order"], ev["pathway"], ev["decision"], criteria))
    return out


def check_filler(handler: Any) -> list[str]:
    """Problems with the workload: a filler code the tables know, or filler that changes the answer."""
    tables = handler.tables
    codes = filler_codes()
    problems = [f"LOINC {c} is a receptor test" for c in codes["loinc"] if c in tables.receptor_tests]
    problems += [
        f"ICD-10-CM {c} is in the tables" for c in codes["icd-10-cm"] if tables.condition_code_relevant("icd-10-cm", c)
    ]
    problems += [f"SNOMED {c} is in the tables" for c in codes["snomed"] if tables.condition_code_relevant("snomed", c)]
    for rxcui, display in MEDICATIONS:
        if tables.ingredient_tags_for_code(rxcui) or tables.ingredient_tags_in_text(display) or tables.product(rxcui):
            problems.append(f"RxNorm {rxcui} ({display}) is in the tables")
    base = load_scenario()
    reference = _verdict(handler.handle("everolimus-order-sign", hook_request(len(prefetched_chart(base)), base)).body)
    if not reference:
        problems.append("the base scenario evaluates no everolimus order")
    for size in (TYPICAL_SIZE, *CHART_SIZES):
        got = _verdict(handler.handle("everolimus-order-sign", hook_request(size, base)).body)
        if got != reference:
            problems.append(f"the {size}-resource chart changes the evaluation: {got} != {reference}")
    for size in READ_SIZES:
        got = _verdict(handler.handle("everolimus-order-sign", hook_request(size, base, read=True)).body)
        if got != reference:
            problems.append(f"the {size}-resource read chart changes the evaluation: {got} != {reference}")
    return problems
