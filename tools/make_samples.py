#!/usr/bin/env python3
"""Generate ``sample_bundles/``: complete CDS Hooks requests for CP.PHAR.63, their expectations and README.

Each sample is a short Python definition (a synthetic chart, the draft orders, and the outcome the policy text
and ``cds_service/policies/cp-phar-63/policy.yaml`` call for, reasoned by hand, never copied from the service's
output). Keeping chart and expectation side by side makes both reviewable; the JSON is generated so the
repetitive FHIR boilerplate stays consistent. All people, identifiers and organisations are fictional; every
clinical code comes from the pack's and the shared code tables or ``shared/reference/codes.csv``; dates are relative
to the orders' authoredOn, 2026-11-20.

    .venv/bin/python tools/make_samples.py           # (re)write sample_bundles/
    .venv/bin/python tools/make_samples.py --check   # exit 1 when sample_bundles/ is not what this writes
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "sample_bundles"

AUTHORED = date(2026, 11, 20)
EHR_BASE = "https://ehr.example.org/fhir"
ID_SYSTEM = "https://ehr.example.org/fhir/sid"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/priorauth-cds/sample_bundles")

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
NUCC = "http://nucc.org/provider-taxonomy"
SOPT = "https://nahdo.org/sopt"
UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
REQUEST_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
DOSE_RATE_TYPE = "http://terminology.hl7.org/CodeSystem/dose-rate-type"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"

#: RxNorm code -> display, as in cds_service/policies/cp-phar-63/tables/products.csv and ingredients.csv.
MEDS: dict[str, str] = {
    "998189": "everolimus 2.5 MG Oral Tablet",
    "845515": "everolimus 5 MG Oral Tablet",
    "845518": "everolimus 5 MG Oral Tablet [Afinitor]",
    "1119402": "everolimus 7.5 MG Oral Tablet [Afinitor]",
    "845507": "everolimus 10 MG Oral Tablet",
    "845512": "everolimus 10 MG Oral Tablet [Afinitor]",
    "1308428": "everolimus 2 MG Tablet for Oral Suspension",
    "1308430": "everolimus 3 MG Tablet for Oral Suspension",
    "1308432": "everolimus 5 MG Tablet for Oral Suspension",
    "1310147": "everolimus 5 MG Tablet for Oral Suspension [Afinitor]",
    "977438": "everolimus 0.75 MG Oral Tablet",
    "2056895": "everolimus 1 MG Oral Tablet",
    "258494": "exemestane",
    "282357": "fulvestrant",
    "10324": "tamoxifen",
    "84857": "anastrozole",
    "72965": "letrozole",
    "42316": "tacrolimus",
    "3008": "cyclosporine",
    "8640": "prednisone",
    "196102": "basiliximab",
    "282388": "imatinib",
    "357977": "sunitinib",
    "1312397": "regorafenib",
    "1363268": "cabozantinib",
    "1603296": "lenvatinib",
    "32624": "oxcarbazepine",
    "21241": "clobazam",
    "28439": "lamotrigine",
    "312068": "1 ML octreotide 0.05 MG/ML Injection",
    "898589": "octreotide 20 MG Injection",
}
#: Coverage.type (SOPT) and plan class per line of business; the plan prefix (CDS_PLAN_PREFIXES) decides.
PLANS: dict[str, tuple[str, str, str, str]] = {
    "medicaid": ("2", "MEDICAID", "MCD-GA-01", "Example State Medicaid Managed Care"),
    "him": ("5", "PRIVATE HEALTH INSURANCE", "HIM-TX-02", "Example Marketplace Silver"),
    "commercial": ("5", "PRIVATE HEALTH INSURANCE", "COM-MO-03", "Example Employer PPO"),
}
ONCOLOGY = ("207RX0202X", "Allopathic & Osteopathic Physicians; Internal Medicine, Medical Oncology")
HEM_ONC = ("207RH0003X", "Allopathic & Osteopathic Physicians; Internal Medicine, Hematology & Oncology")
PEDS_HEM_ONC = ("2080P0207X", "Allopathic & Osteopathic Physicians; Pediatrics, Pediatric Hematology-Oncology")
CHILD_NEURO = (
    "2084N0402X",
    "Allopathic & Osteopathic Physicians; Psychiatry & Neurology, Neurology with Special Qualifications in Child "
    "Neurology",
)
EPILEPSY = ("2084E0001X", "Allopathic & Osteopathic Physicians; Psychiatry & Neurology, Epilepsy")
NEPHROLOGY = ("207RN0300X", "Allopathic & Osteopathic Physicians; Internal Medicine, Nephrology")
TRANSPLANT_HEPATOLOGY = ("207RT0003X", "Allopathic & Osteopathic Physicians; Internal Medicine, Transplant Hepatology")
TRANSPLANT_SURGERY = ("204F00000X", "Allopathic & Osteopathic Physicians; Transplant Surgery")
#: Receptor result -> SNOMED value (fhir_mappings/tables/receptor_values.csv).
RESULT = {"positive": ("10828004", "Positive"), "negative": ("260385009", "Negative")}


def ago(days: int) -> str:
    """An ISO date ``days`` before the orders' authoredOn."""
    return (AUTHORED - timedelta(days=days)).isoformat()


def after(days: int) -> str:
    """An ISO date ``days`` after the orders' authoredOn."""
    return (AUTHORED + timedelta(days=days)).isoformat()


def concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": text or display}


def med(code: str, text: str | None = None) -> dict[str, Any]:
    """An RxNorm medication concept (text may name the strength when the code is an ingredient)."""
    return concept(RXNORM, code, MEDS[code], text)


def free_text_med(text: str) -> dict[str, Any]:
    """A medication the EHR holds as text only (e.g. an outside prescription reconciled by name)."""
    return {"text": text}


def dosage(mg: float, per_day: int, text: str, *, note: str | None = None) -> list[dict[str, Any]]:
    """One FHIR Dosage: ``mg`` per administration, ``per_day`` administrations a day, by mouth."""
    value: int | float = int(mg) if float(mg).is_integer() else mg
    instruction: dict[str, Any] = {
        "sequence": 1,
        "text": text,
        "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
        "route": {"text": "oral"},
        "doseAndRate": [
            {
                "type": concept(DOSE_RATE_TYPE, "ordered", "Ordered"),
                "doseQuantity": {"value": value, "unit": "mg", "system": UCUM, "code": "mg"},
            }
        ],
    }
    if note:
        instruction["patientInstruction"] = note
    return [instruction]


def text_dosage(text: str) -> list[dict[str, Any]]:
    """A sig the EHR carries as text only (companion drugs whose dose the policy does not check)."""
    return [{"sequence": 1, "text": text}]


# ----------------------------------------------------------------------------- chart builder


@dataclass
class Chart:
    """One synthetic patient: chart resources by prefetch key, draft orders, and who is signing."""

    key: str
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    drafts: list[dict[str, Any]] = field(default_factory=list)
    role_id: str | None = None
    coverage_id: str | None = None
    counter: int = 0

    def next_id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.key}-{kind}-{self.counter}"

    def add(self, prefetch_key: str, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources.setdefault(prefetch_key, []).append(resource)
        return resource

    @property
    def patient_ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.key}"}

    def patient(self, given: str, family: str, gender: str, birth_date: str) -> None:
        self.add(
            "patient",
            {
                "resourceType": "Patient",
                "id": self.key,
                "identifier": [{"system": f"{ID_SYSTEM}/mrn", "value": f"MRN-{self.key.upper()}"}],
                "active": True,
                "name": [{"use": "official", "family": family, "given": [given]}],
                "gender": gender,
                "birthDate": birth_date,
            },
        )

    def prescriber(self, given: str, family: str, specialty: tuple[str, str] | None, clinic: str) -> None:
        """The signing user: a PractitionerRole (with its specialty, if any) and its Practitioner."""
        practitioner_id, self.role_id = f"{self.key}-prac", f"{self.key}-role"
        role: dict[str, Any] = {
            "resourceType": "PractitionerRole",
            "id": self.role_id,
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner_id}", "display": f"Dr. {given} {family}"},
            "organization": {"display": clinic},
        }
        if specialty is not None:
            role["specialty"] = [concept(NUCC, specialty[0], specialty[1])]
        self.add("practitionerRole", role)
        self.add(
            "practitioner",
            {
                "resourceType": "Practitioner",
                "id": practitioner_id,
                "identifier": [{"system": f"{ID_SYSTEM}/staff", "value": f"STAFF-{self.key.upper()}"}],
                "active": True,
                "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
            },
        )

    def coverage(self, line_of_business: str) -> None:
        sopt_code, sopt_display, plan, plan_name = PLANS[line_of_business]
        self.coverage_id = f"{self.key}-cov"
        self.add(
            "coverage",
            {
                "resourceType": "Coverage",
                "id": self.coverage_id,
                "status": "active",
                "type": concept(SOPT, sopt_code, sopt_display),
                "subscriberId": f"SUB-{self.key.upper()}",
                "beneficiary": self.patient_ref,
                "relationship": concept(SUBSCRIBER_RELATIONSHIP, "self", "Self"),
                "period": {"start": "2026-01-01"},
                "payor": [{"display": "Centene Health Plan"}],
                "class": [{"type": concept(COVERAGE_CLASS, "plan", "Plan"), "value": plan, "name": plan_name}],
            },
        )

    def condition(
        self,
        system: str,
        code: str,
        display: str,
        onset: str,
        *,
        clinical: str = "active",
        stage: tuple[str, str] | None = None,
        category: str = "problem-list-item",
    ) -> str:
        cid = self.next_id("cond")
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": concept(CONDITION_CLINICAL, clinical, clinical.capitalize()),
            "verificationStatus": concept(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
            "category": [concept(CONDITION_CATEGORY, category, category.replace("-", " ").capitalize())],
            "code": concept(system, code, display),
            "subject": self.patient_ref,
            "onsetDateTime": onset,
            "recordedDate": onset,
        }
        if stage is not None:
            resource["stage"] = [{"summary": concept(SNOMED, stage[0], stage[1])}]
        self.add("conditions", resource)
        return cid

    def receptor(self, loinc: str, display: str, on: str, *, result: str | None = None, value: Any = None) -> None:
        """A final laboratory result: a SNOMED positive/negative, a percentage, or a string value."""
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self.next_id("obs"),
            "status": "final",
            "category": [concept(OBSERVATION_CATEGORY, "laboratory", "Laboratory")],
            "code": concept(LOINC, loinc, display),
            "subject": self.patient_ref,
            "effectiveDateTime": on,
        }
        if result is not None:
            resource["valueCodeableConcept"] = concept(SNOMED, *RESULT[result])
        elif isinstance(value, (int, float)):
            resource["valueQuantity"] = {"value": value, "unit": "%", "system": UCUM, "code": "%"}
        else:
            resource["valueString"] = value
        self.add("observations", resource)

    def statement(
        self,
        medication: dict[str, Any],
        start: str,
        end: str | None = None,
        *,
        status: str = "completed",
        dose: list[dict[str, Any]] | None = None,
    ) -> None:
        """What the member took (reconciled history); ``end`` None means still taking it."""
        period = {"start": start} if end is None else {"start": start, "end": end}
        resource: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "id": self.next_id("ms"),
            "status": status,
            "medicationCodeableConcept": medication,
            "subject": self.patient_ref,
            "effectivePeriod": period,
            "dateAsserted": ago(7),
        }
        if dose:
            resource["dosage"] = dose
        self.add("medicationStatements", resource)

    def order(
        self,
        medication: dict[str, Any],
        authored: str,
        *,
        status: str = "active",
        dose: list[dict[str, Any]] | None = None,
        supply_days: int | None = None,
        repeats: int = 0,
    ) -> None:
        """A signed prescription already in the chart (active or completed)."""
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": self.next_id("mr"),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": medication,
            "subject": self.patient_ref,
            "authoredOn": authored,
            "requester": {"reference": f"PractitionerRole/{self.role_id}"},
        }
        if dose:
            resource["dosageInstruction"] = dose
        if supply_days:
            resource["dispenseRequest"] = {
                "numberOfRepeatsAllowed": repeats,
                "expectedSupplyDuration": {"value": supply_days, "unit": "days", "system": UCUM, "code": "d"},
            }
        self.add("medicationRequests", resource)

    def dispense(
        self,
        medication: dict[str, Any],
        handed_over: str,
        days_supply: int,
        *,
        status: str = "completed",
        dose: list[dict[str, Any]] | None = None,
    ) -> None:
        """A pharmacy fill (MedicationDispense): when the member got it and for how many days."""
        resource: dict[str, Any] = {
            "resourceType": "MedicationDispense",
            "id": self.next_id("md"),
            "status": status,
            "medicationCodeableConcept": medication,
            "subject": self.patient_ref,
            "daysSupply": {"value": days_supply, "unit": "days", "system": UCUM, "code": "d"},
            "whenHandedOver": handed_over,
        }
        if dose:
            resource["dosageInstruction"] = dose
        self.add("medicationDispenses", resource)

    def disease_status(self, code: str, display: str, on: str, *, status: str = "final") -> None:
        """An mCODE CancerDiseaseStatus assessment (LOINC 97509-4) valued from its ConditionStatusTrendVS."""
        resource = {
            "resourceType": "Observation",
            "id": self.next_id("status"),
            "meta": {"profile": ["http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-cancer-disease-status"]},
            "status": status,
            "code": concept(LOINC, "97509-4", "Cancer Disease Progression"),
            "subject": self.patient_ref,
            "effectiveDateTime": on,
            "valueCodeableConcept": concept(SNOMED, code, display),
        }
        self.add("diseaseStatus", resource)

    def procedure(self, system: str, code: str, display: str, status: str, performed: str) -> str:
        """A Procedure of the chart: completed (received) or planned (preparation, a future date)."""
        pid = self.next_id("proc")
        self.add(
            "procedures",
            {
                "resourceType": "Procedure",
                "id": pid,
                "status": status,
                "code": concept(system, code, display),
                "subject": self.patient_ref,
                "performedDateTime": performed,
            },
        )
        return pid

    def allergy(self, substance: dict[str, Any], kind: str, criticality: str, recorded: str) -> str:
        """An active, confirmed AllergyIntolerance entry (``kind`` allergy or intolerance)."""
        aid = self.next_id("allergy")
        self.add(
            "allergies",
            {
                "resourceType": "AllergyIntolerance",
                "id": aid,
                "clinicalStatus": concept(ALLERGY_CLINICAL, "active", "Active"),
                "verificationStatus": concept(ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
                "type": kind,
                "category": ["medication"],
                "criticality": criticality,
                "code": substance,
                "patient": self.patient_ref,
                "recordedDate": recorded,
            },
        )
        return aid

    def draft(
        self,
        medication: dict[str, Any],
        dose: list[dict[str, Any]],
        *,
        quantity: int | None = None,
        supply_days: int = 30,
        repeats: int = 2,
        validity_days: int | None = None,
        reason: str | None = None,
        substitution: dict[str, Any] | None = None,
    ) -> str:
        """An unsigned order in this request; returns its ``MedicationRequest/id``."""
        oid = self.next_id("order")
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": oid,
            "status": "draft",
            "intent": "order",
            "category": [concept(REQUEST_CATEGORY, "community", "Community")],
            "medicationCodeableConcept": medication,
            "subject": self.patient_ref,
            "authoredOn": AUTHORED.isoformat(),
            "requester": {"reference": f"PractitionerRole/{self.role_id}"},
        }
        if reason:
            resource["reasonReference"] = [{"reference": f"Condition/{reason}"}]
        resource["dosageInstruction"] = dose
        if self.coverage_id:
            resource["insurance"] = [{"reference": f"Coverage/{self.coverage_id}"}]
        dispense: dict[str, Any] = {}
        if validity_days is not None:
            dispense["validityPeriod"] = {"start": AUTHORED.isoformat(), "end": after(validity_days)}
        dispense["numberOfRepeatsAllowed"] = repeats
        if quantity is not None:
            dispense["quantity"] = {"value": quantity, "unit": "tablet", "system": UCUM, "code": "{tbl}"}
        dispense["expectedSupplyDuration"] = {"value": supply_days, "unit": "days", "system": UCUM, "code": "d"}
        resource["dispenseRequest"] = dispense
        if substitution is not None:
            resource["substitution"] = substitution
        self.drafts.append(resource)
        return f"MedicationRequest/{oid}"


# ----------------------------------------------------------------------------- request assembly


def searchset(resources: list[dict[str, Any]], included: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A FHIR searchset Bundle as an EHR answers a prefetch query (``_include``d resources last)."""
    entries = [
        {"fullUrl": f"{EHR_BASE}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in resources
    ]
    entries += [
        {"fullUrl": f"{EHR_BASE}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
        for r in included or []
    ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if entries:
        bundle["entry"] = entries
    return bundle


def prefetch_for(chart: Chart) -> dict[str, Any]:
    """Every key of our discovery templates; the Practitioner rides in practitionerRole as an _include."""
    found = chart.resources
    prefetch: dict[str, Any] = {"patient": found["patient"][0]}
    for key in (
        "coverage",
        "conditions",
        "medicationStatements",
        "medicationRequests",
        "medicationDispenses",
        "observations",
        "diseaseStatus",
    ):
        prefetch[key] = searchset(found.get(key, []))
    prefetch["practitionerRole"] = searchset(found.get("practitionerRole", []), found.get("practitioner", []))
    prefetch["allergies"] = searchset(found.get("allergies", []))
    prefetch["procedures"] = searchset(found.get("procedures", []))
    return prefetch


def request_for(
    name: str, chart: Chart, hook: str = "order-sign", selections: list[str] | None = None
) -> dict[str, Any]:
    """The full hook request; ids and UUIDs derive from the sample name, so regenerating changes nothing."""
    entries = [
        {"fullUrl": f"urn:uuid:{uuid.uuid5(NAMESPACE, name + '/' + d['id'])}", "resource": d} for d in chart.drafts
    ]
    context: dict[str, Any] = {
        "userId": f"PractitionerRole/{chart.role_id}",
        "patientId": chart.key,
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entries},
    }
    if selections is not None:
        context["selections"] = selections
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid5(NAMESPACE, name)),
        "context": context,
        "prefetch": prefetch_for(chart),
    }


# ----------------------------------------------------------------------------- expectations


def statuses(text: str) -> dict[str, str]:
    """``"I.A.1 met, I.A.2 unknown"`` -> {"I.A.1": "met", "I.A.2": "unknown"} (commas or newlines)."""
    out: dict[str, str] = {}
    for item in text.replace("\n", ",").split(","):
        if item.strip():
            cid, status = item.split()
            out[cid] = status
    return out


def dose_tree(prefix: str, i: str = "met", ii: str = "met", iii: str = "met") -> str:
    """The "(a or b)" dose criterion with its limits: a is all of i-iii, b (literature) is only in notes."""
    a = "not-met" if "not-met" in (i, ii, iii) else "unknown" if "unknown" in (i, ii, iii) else "met"
    whole = "met" if a == "met" else "unknown"
    return (
        f"{prefix} {whole}, {prefix}.a {a}, {prefix}.a.i {i}, {prefix}.a.ii {ii}, {prefix}.a.iii {iii}, "
        f"{prefix}.b unknown"
    )


IH2_NONE = "I.H.2.a.i not-met, I.H.2.a.ii not-met, I.H.2.a.iii not-met"
II_REFER = "I.I.1 unknown, I.I.1.a unknown, I.I.1.b unknown, I.I.2 met"


@dataclass(frozen=True)
class Sample:
    """One file: what it shows (README), the request, and the expected evaluation."""

    name: str
    shows: str
    request: dict[str, Any]
    expected: dict[str, Any]


def expect(
    order: str,
    pathway: str,
    decision: str,
    criteria: str,
    *,
    lob: str | None,
    months: int | None = None,
    refer: str | None = None,
    codes: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
    also: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``also``: other orders of the drug in the same request -> criteria statuses they must show too."""
    out: dict[str, Any] = {"order": order, "pathway": pathway, "decision": decision}
    if lob is not None:
        out["lineOfBusiness"] = lob
    if months is not None:
        out["approvalMonths"] = months
    if refer is not None:
        out["referTo"] = refer
    out["criteria"] = statuses(criteria)
    if codes:
        out["suggestCodes"] = list(codes)
    if names:
        out["suggestMedication"] = list(names)
    if also:
        out["alsoOrders"] = {ref: statuses(criteria) for ref, criteria in also.items()}
    return out


# ----------------------------------------------------------------------------- shared chart fragments


def breast_chart(
    chart: Chart,
    *,
    given: str,
    family: str,
    born: str,
    lob: str | None,
    specialty: tuple[str, str] | None = ONCOLOGY,
    site: tuple[str, str] = ("C50.412", "Malignant neoplasm of upper-outer quadrant of left female breast"),
    metastasis: tuple[str, str] | None = ("C79.51", "Secondary malignant neoplasm of bone"),
    receptors: str = "observations",
    prior: str = "72965",
    prior_until: int = 60,
) -> str:
    """Advanced HR+/HER2- breast cancer after an aromatase inhibitor; returns the primary Condition id."""
    chart.patient(given, family, "female", born)
    chart.prescriber("Helena", "Marchetti", specialty, "Example Regional Cancer Center")
    if lob:
        chart.coverage(lob)
    primary = chart.condition(ICD10, *site, ago(1380))
    if metastasis:
        chart.condition(ICD10, *metastasis, ago(52))
    if receptors == "observations":
        chart.receptor("85337-4", "Estrogen receptor Ag [Presence] in Breast cancer specimen by Immune stain",
                       ago(1370), result="positive")
        chart.receptor("85339-0", "Progesterone receptor Ag [Presence] in Breast cancer specimen by Immune stain",
                       ago(1370), result="positive")
        chart.receptor("85319-2", "HER2 [Presence] in Breast cancer specimen by Immune stain", ago(1370),
                       result="negative")
    elif receptors == "z17":
        chart.condition(ICD10, "Z17.411", "Hormone receptor positive with human epidermal growth factor receptor 2 "
                        "negative status", ago(1370), category="encounter-diagnosis")
    chart.statement(med(prior), ago(1300), ago(prior_until))
    return primary


def exemestane_draft(chart: Chart) -> None:
    chart.draft(med("258494", "exemestane 25 MG Oral Tablet"), text_dosage("25 mg by mouth once daily after a meal"),
                quantity=30)


def ia_criteria(dose: str | None = None, **changes: str) -> str:
    """I.A with every criterion met (9.b, literature support, is only ever in notes), then the changes."""
    base = statuses(
        "I.A.1 met, I.A.2 met, I.A.3 met, I.A.4 met, I.A.5 met, I.A.6 met, I.A.7 met, I.A.8 met,"
        + (dose or dose_tree("I.A.9"))
    )
    base.update({k.replace("_", "."): v for k, v in changes.items()})
    return ", ".join(f"{k} {v}" for k, v in base.items())


def ten_mg_daily() -> list[dict[str, Any]]:
    return dosage(10, 1, "10 mg by mouth once daily")


# ----------------------------------------------------------------------------- I.A breast cancer


def ia_met() -> Sample:
    name = "I.A-met-generic-with-exemestane"
    c = Chart("ia-met")
    primary = breast_chart(c, given="Lorraine", family="Ashgrove", born="1966-04-09", lob="commercial")
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, repeats=11, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "Generic everolimus 10 mg + exemestane after letrozole, bone-metastatic ER+/PR+/HER2- (IHC), medical "
        "oncologist, commercial, 30 days x 12 fills -> met, 12 months",
        request_for(name, c),
        expect(order, "I.A", "met", ia_criteria(), lob="commercial", months=12),
    )


def ia_brand_without_exemestane() -> Sample:
    name = "I.A-brand-without-exemestane"
    c = Chart("ia-brand")
    primary = breast_chart(c, given="Beatrix", family="Quennell", born="1972-08-03", lob="medicaid",
                           site=("C50.912", "Malignant neoplasm of unspecified site of left female breast"),
                           metastasis=("C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct"),
                           receptors="z17", prior="84857")
    order = c.draft(med("845512"), ten_mg_daily(), quantity=28, supply_days=28, repeats=5, reason=primary)
    return Sample(
        name,
        "Brand Afinitor 10 mg alone (no exemestane, fulvestrant or tamoxifen), liver-metastatic HR+/HER2- (Z17.411) "
        "after anastrozole, Medicaid -> not-met I.A.7 + I.A.8; suggests generic 845507 and exemestane",
        request_for(name, c),
        expect(order, "I.A", "not-met", ia_criteria(I_A_7="not-met", I_A_8="not-met"), lob="medicaid", months=6,
               codes=("845507", "310261"), names=("everolimus 10 MG Oral Tablet", "exemestane 25 MG Oral Tablet")),
    )


def ia_her2_positive() -> Sample:
    name = "I.A-her2-positive"
    c = Chart("ia-her2")
    c.patient("Marisol", "Vantreese", "female", "1979-01-27")
    c.prescriber("Helena", "Marchetti", ONCOLOGY, "Example Regional Cancer Center")
    c.coverage("him")
    primary = c.condition(ICD10, "C50.211", "Malignant neoplasm of upper-inner quadrant of right female breast",
                          ago(900))
    c.condition(ICD10, "C79.31", "Secondary malignant neoplasm of brain", ago(40))
    c.receptor("16112-5", "Estrogen receptor [Interpretation] in Tissue", ago(890), result="positive")
    c.receptor("16113-3", "Progesterone receptor [Interpretation] in Tissue", ago(890), result="negative")
    c.receptor("85318-4", "ERBB2 gene duplication [Presence] in Breast cancer specimen by FISH", ago(888),
               result="positive")
    c.statement(med("10324", "tamoxifen 20 MG Oral Tablet"), ago(870), ago(45))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "ER+ but HER2 amplified (FISH), brain-metastatic, generic everolimus + exemestane after tamoxifen, HIM -> "
        "not-met I.A.5 (no one-click fix), 6 months",
        request_for(name, c),
        expect(order, "I.A", "not-met", ia_criteria(I_A_5="not-met"), lob="him", months=6),
    )


def ia_dose_over_limit() -> Sample:
    name = "I.A-dose-over-limit"
    c = Chart("ia-dose")
    primary = breast_chart(c, given="Odile", family="Farrant", born="1961-10-30", lob="medicaid", specialty=HEM_ONC,
                           site=("C50.511", "Malignant neoplasm of lower-outer quadrant of right female breast"),
                           metastasis=("C78.01", "Secondary malignant neoplasm of right lung"))
    order = c.draft(med("845507"), dosage(10, 3, "10 mg by mouth three times daily"), quantity=90, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "Generic 10 mg three times daily (30 mg, 3 tablets a day) otherwise complete, Medicaid -> I.A.9.a not-met, "
        "I.A.9 unknown (literature may support it), incomplete",
        request_for(name, c),
        expect(order, "I.A", "incomplete", ia_criteria(dose=dose_tree("I.A.9", i="not-met", ii="not-met")),
               lob="medicaid", months=6),
    )


def ia_specialty_undocumented() -> Sample:
    name = "I.A-specialty-undocumented"
    c = Chart("ia-spec")
    primary = breast_chart(c, given="Greta", family="Lindqvist", born="1958-12-02", lob="medicaid", specialty=None)
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "Complete breast cancer request signed by a practitioner whose role has no specialty, Medicaid -> I.A.3 "
        "unknown (oncology consultation may be documented), incomplete",
        request_for(name, c),
        expect(order, "I.A", "incomplete", ia_criteria(I_A_3="unknown"), lob="medicaid", months=6),
    )


def ia_recurrent_fulvestrant() -> Sample:
    name = "I.A-recurrent-with-fulvestrant"
    c = Chart("ia-recur")
    c.patient("Philippa", "Drummond-Hale", "female", "1963-06-18")
    c.prescriber("Tomasz", "Wierzbicki", ONCOLOGY, "Example Breast Oncology Clinic")
    c.coverage("commercial")
    primary = c.condition(ICD10, "C50.812", "Malignant neoplasm of overlapping sites of left female breast", ago(2400),
                          clinical="recurrence")
    c.receptor("85329-1", "Cells.estrogen receptor/100 cells in Breast cancer specimen by Immune stain", ago(75),
               value=90)
    c.receptor("85325-9", "Cells.progesterone receptor/100 cells in Breast cancer specimen by Immune stain", ago(75),
               value=40)
    c.receptor("85319-2", "HER2 [Presence] in Breast cancer specimen by Immune stain", ago(75), value="IHC 1+")
    c.statement(med("84857", "anastrozole 1 MG Oral Tablet"), ago(2350), ago(560))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, repeats=5, validity_days=180, reason=primary)
    c.draft(med("282357", "fulvestrant 250 MG in 5 ML Prefilled Syringe"),
            text_dosage("500 mg intramuscularly on days 1, 15 and 29, then monthly"))
    return Sample(
        name,
        "Recurrent breast cancer (clinicalStatus recurrence, no metastasis coded), ER 90% / PR 40% / HER2 IHC 1+, "
        "prior anastrozole, fulvestrant co-ordered, commercial, validityPeriod 180 days -> met, 6 months",
        request_for(name, c),
        expect(order, "I.A", "met", ia_criteria(), lob="commercial", months=6),
    )


def ia_dispense_as_written() -> Sample:
    name = "I.A-brand-dispense-as-written"
    c = Chart("ia-daw")
    primary = breast_chart(c, given="Yvonne", family="Castellane", born="1955-02-14", lob="medicaid")
    substitution = {
        "allowedBoolean": False,
        "reason": {"text": "Grade 3 rash with two generic everolimus products; tolerated brand Afinitor"},
    }
    order = c.draft(med("1119402"), dosage(7.5, 1, "7.5 mg by mouth once daily"), quantity=30, reason=primary,
                    substitution=substitution)
    exemestane_draft(c)
    return Sample(
        name,
        "Brand Afinitor 7.5 mg with substitution not allowed and a stated intolerance to generics, otherwise complete, "
        "Medicaid -> I.A.7 unknown, no switch pushed, incomplete",
        request_for(name, c),
        expect(order, "I.A", "incomplete", ia_criteria(I_A_7="unknown"), lob="medicaid", months=6),
    )


def ia_no_coverage() -> Sample:
    name = "I.A-no-coverage-on-file"
    c = Chart("ia-nocov")
    primary = breast_chart(c, given="Winifred", family="Ostrander", born="1960-07-21", lob=None)
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "Complete breast cancer request but no Coverage in the chart -> met, no line of business, no approval "
        "duration",
        request_for(name, c),
        expect(order, "I.A", "met", ia_criteria(), lob=None),
    )


def under_18_breast() -> Sample:
    name = "under-18-breast"
    c = Chart("ia-teen")
    primary = breast_chart(c, given="Juniper", family="Halloway", born="2009-04-11", lob="medicaid",
                           specialty=PEDS_HEM_ONC,
                           site=("C50.911", "Malignant neoplasm of unspecified site of right female breast"),
                           metastasis=("C78.01", "Secondary malignant neoplasm of right lung"), prior="10324")
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "17-year-old with metastatic HR+/HER2- breast cancer after tamoxifen, generic + exemestane, Medicaid -> "
        "I.A.4 not-met (age), not-met",
        request_for(name, c),
        expect(order, "I.A", "not-met", ia_criteria(I_A_4="not-met"), lob="medicaid", months=6),
    )


def him_brand_disperz() -> Sample:
    name = "HIM-brand-disperz-refer"
    c = Chart("him-disperz")
    primary = breast_chart(c, given="Rosalind", family="Ebberly", born="1975-09-05", lob="him", receptors="z17")
    order = c.draft(med("1310147"), dosage(10, 1, "10 mg (two 5 mg tablets) dispersed in water, by mouth once daily"),
                    quantity=60, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "HIM member, brand Afinitor Disperz 5 mg x 2 for breast cancer (cannot swallow tablets), otherwise "
        "complete -> refer HIM.PA.103 (the product is non-formulary, brand or generic, whatever the pathway); no "
        "generic swap is suggested (it would be referred too)",
        request_for(name, c),
        expect(order, "I.A", "refer", ia_criteria(I_A_7="not-met"), lob="him", refer="HIM.PA.103"),
    )


def order_select_preview() -> Sample:
    name = "order-select-preview"
    c = Chart("sel-brand")
    primary = breast_chart(c, given="Cordelia", family="Pennifold", born="1964-03-30", lob="medicaid")
    order = c.draft(med("845518"), dosage(5, 1, "5 mg by mouth once daily (reduced dose, hepatic impairment)"),
                    quantity=30, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "order-select: brand Afinitor 5 mg selected while exemestane is also being drafted, Medicaid -> not-met "
        "I.A.7; suggests generic 845515 before signing",
        request_for(name, c, hook="order-select", selections=[order]),
        expect(order, "I.A", "not-met", ia_criteria(I_A_7="not-met"), lob="medicaid", months=6,
               codes=("845515",), names=("everolimus 5 MG Oral Tablet",)),
    )


def order_select_other() -> Sample:
    name = "order-select-other-order-selected"
    c = Chart("sel-other")
    primary = breast_chart(c, given="Henrietta", family="Lowell-Byrne", born="1962-11-08", lob="medicaid")
    c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    exemestane_draft(c)
    selected = f"MedicationRequest/{c.drafts[-1]['id']}"
    return Sample(
        name,
        "order-select where only the exemestane draft is selected (everolimus drafted but not selected) -> no "
        "evaluation, no cards",
        request_for(name, c, hook="order-select", selections=[selected]),
        {"noEvaluations": True},
    )


def no_everolimus() -> Sample:
    name = "no-everolimus"
    c = Chart("no-evero")
    c.patient("Adelaide", "Morrow", "female", "1970-05-19")
    c.prescriber("Helena", "Marchetti", ONCOLOGY, "Example Regional Cancer Center")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "C50.411", "Malignant neoplasm of upper-outer quadrant of right female breast",
                          ago(30))
    c.draft(med("10324", "tamoxifen 20 MG Oral Tablet"), text_dosage("20 mg by mouth once daily"), quantity=30,
            reason=primary)
    return Sample(
        name,
        "order-sign for tamoxifen only -> no everolimus in scope: no evaluation, no cards, nothing fetched",
        request_for(name, c),
        {"noEvaluations": True},
    )


# ----------------------------------------------------------------------------- I.B - I.D


def ib_criteria(**changes: str) -> str:
    base = statuses(
        "I.B.1 met, I.B.2 met, I.B.2.a unknown, I.B.2.b unknown, I.B.2.c unknown, I.B.2.d unknown, I.B.3 met, "
        "I.B.4 met, I.B.5 met, I.B.6 met," + dose_tree("I.B.7")
    )
    base.update({k.replace("_", "."): v for k, v in changes.items()})
    return ", ".join(f"{k} {v}" for k, v in base.items())


def ib_lung_unresectable() -> Sample:
    name = "I.B-lung-net-unresectable"
    c = Chart("ib-lung")
    c.patient("Desmond", "Achterberg", "male", "1963-01-15")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example Thoracic Oncology")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "C7A.090", "Malignant carcinoid tumor of the bronchus and lung", ago(160))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Lung carcinoid, unresectable per the notes (no metastasis coded), generic 10 mg, Medicaid -> I.B.2.c met, "
        "I.B.3 unknown, incomplete",
        request_for(name, c),
        expect(order, "I.B", "incomplete", ib_criteria(I_B_2_c="met", I_B_3="unknown"), lob="medicaid", months=6),
    )


def commercial_short_request() -> Sample:
    name = "commercial-short-request"
    c = Chart("ib-pnet")
    c.patient("Augustin", "Pelletreau", "male", "1960-08-24")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example GI Oncology")
    c.coverage("commercial")
    primary = c.condition(ICD10, "C25.4", "Malignant neoplasm of endocrine pancreas", ago(420))
    c.condition(ICD10, "C7B.02", "Secondary carcinoid tumors of liver", ago(95))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, repeats=2, validity_days=90, reason=primary)
    return Sample(
        name,
        "Pancreatic NET with liver metastases, generic 10 mg, commercial, validityPeriod 90 days -> I.B met, "
        "approval 3 months (duration of request, less than 12)",
        request_for(name, c),
        expect(order, "I.B", "met", ib_criteria(I_B_2_a="met"), lob="commercial", months=3),
    )


def ic_criteria(**changes: str) -> str:
    base = statuses("I.C.1 met, I.C.2 met, I.C.3 met, I.C.4 met, I.C.5 met, I.C.6 met," + dose_tree("I.C.7"))
    base.update({k.replace("_", "."): v for k, v in changes.items()})
    return ", ".join(f"{k} {v}" for k, v in base.items())


def ic_clear_cell_no_prior() -> Sample:
    name = "I.C-rcc-clear-cell-no-prior"
    c = Chart("ic-noprior")
    c.patient("Leopold", "Varga-Summers", "male", "1968-03-11")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example GU Oncology")
    c.coverage("him")
    primary = c.condition(ICD10, "C64.2", "Malignant neoplasm of left kidney, except renal pelvis", ago(110))
    c.condition(ICD10, "C78.01", "Secondary malignant neoplasm of right lung", ago(100))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Metastatic RCC (clear cell per pathology notes only), no prior therapy on record, generic 10 mg first "
        "line, HIM -> I.C.6 unknown, incomplete",
        request_for(name, c),
        expect(order, "I.C", "incomplete", ic_criteria(I_C_6="unknown"), lob="him", months=6),
    )


def ic_after_cabozantinib() -> Sample:
    name = "I.C-rcc-after-cabozantinib"
    c = Chart("ic-cabo")
    c.patient("Fenwick", "Oyelaran", "male", "1957-12-01")
    c.prescriber("Ingrid", "Solvang", HEM_ONC, "Example GU Oncology")
    c.coverage("commercial")
    primary = c.condition(SNOMED, "702391001", "Renal cell carcinoma", ago(700), stage=("258228008", "Stage 4"))
    c.statement(med("1363268", "cabozantinib 60 MG Oral Tablet"), ago(330), ago(35))
    order = c.draft(med("845515"), dosage(5, 1, "5 mg by mouth once daily with lenvatinib"), quantity=30, repeats=11,
                    reason=primary)
    c.draft(med("1603296", "lenvatinib 18 mg daily (one 10 MG and two 4 MG capsules)"),
            text_dosage("18 mg by mouth once daily"))
    return Sample(
        name,
        "Stage 4 RCC (SNOMED, stage.summary) progressing after cabozantinib, generic 5 mg + lenvatinib, commercial, "
        "30 days x 12 -> met (I.C.6 met by the prior therapy), 12 months",
        request_for(name, c),
        expect(order, "I.C", "met", ic_criteria(), lob="commercial", months=12),
    )


def id_tsc_renal_aml() -> Sample:
    name = "I.D-tsc-renal-aml"
    c = Chart("id-aml")
    c.patient("Saoirse", "Kettleburn", "female", "1997-07-07")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example Tuberous Sclerosis Clinic")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "1999-02-10")
    primary = c.condition(SNOMED, "254921004", "Angiomyolipoma of kidney", ago(150))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Adult with TSC and renal angiomyolipoma (SNOMED), generic 10 mg, Medicaid -> I.D (not I.E/I.F, only "
        "suggested by TSC); I.D.2 unknown (no immediate surgery is only in notes), incomplete",
        request_for(name, c),
        expect(order, "I.D", "incomplete",
               "I.D.1 met, I.D.2 unknown, I.D.3 met, I.D.4 met, I.D.5 met," + dose_tree("I.D.6"),
               lob="medicaid", months=6),
    )


# ----------------------------------------------------------------------------- I.E - I.G


def ie_sega_child() -> Sample:
    name = "I.E-sega-child-disperz"
    c = Chart("ie-sega")
    c.patient("Tobias", "Wrenfield", "male", "2019-06-12")
    c.prescriber("Nkechi", "Abernathy-Cole", PEDS_HEM_ONC, "Example Children's Neuro-Oncology")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "2019-09-03")
    primary = c.condition(ICD10, "D43.0", "Neoplasm of uncertain behavior of brain, supratentorial", ago(100))
    order = c.draft(med("1308428"), dosage(4, 1, "4 mg (two 2 mg tablets) as oral suspension once daily",
                                           note="4.5 mg/m2 (BSA 0.9 m2); trough in 2 weeks"),
                    quantity=60, repeats=5, reason=primary)
    return Sample(
        name,
        "7-year-old with TSC and a growing subependymal lesion (D43.0; SEGA has no ICD-10-CM code), generic tablets "
        "for oral suspension 4 mg/day, Medicaid -> I.E with I.E.2 unknown (SEGA only possible), incomplete",
        request_for(name, c),
        expect(order, "I.E", "incomplete", "I.E.1 met, I.E.2 unknown, I.E.3 met, I.E.4 met, I.E.5 met",
               lob="medicaid", months=6),
    )


IF_ALL_MET = "I.F.1 met, I.F.2 met, I.F.3 met, I.F.4 met, I.F.5 met, I.F.6 met"


def if_seizures_adjunctive() -> Sample:
    name = "I.F-tsc-seizures-adjunctive"
    c = Chart("if-sz")
    c.patient("Clementine", "Rathbourne", "female", "2017-03-22")
    c.prescriber("Anselm", "Kovacevic", CHILD_NEURO, "Example Pediatric Epilepsy Center")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "2017-08-14")
    primary = c.condition(
        ICD10,
        "G40.219",
        "Localization-related (focal) (partial) symptomatic epilepsy and epileptic syndromes with complex partial "
        "seizures, intractable, without status epilepticus",
        ago(1100),
    )
    c.order(med("32624", "oxcarbazepine 300 MG Oral Tablet"), ago(600), dose=text_dosage("450 mg by mouth twice daily"),
            supply_days=30, repeats=5)
    c.statement(med("21241", "clobazam 10 MG Oral Tablet"), ago(400), status="active")
    order = c.draft(med("1308432"), dosage(5, 1, "5 mg as oral suspension once daily",
                                           note="5 mg/m2 (BSA 1.0 m2); trough in 2 weeks"),
                    quantity=30, reason=primary)
    return Sample(
        name,
        "9-year-old with TSC and intractable focal seizures on oxcarbazepine + clobazam, child neurologist, generic "
        "tablets for oral suspension 5 mg, Medicaid -> I.F met (adjunctive), 6 months",
        request_for(name, c),
        expect(order, "I.F", "met", IF_ALL_MET, lob="medicaid", months=6),
    )


def if_him_refer() -> Sample:
    name = "I.F-him-refer"
    c = Chart("if-him")
    c.patient("Ignatius", "Farrowdale", "male", "2011-10-09")
    c.prescriber("Anselm", "Kovacevic", EPILEPSY, "Example Comprehensive Epilepsy Center")
    c.coverage("him")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "2012-01-20")
    primary = c.condition(
        ICD10,
        "G40.119",
        "Localization-related (focal) (partial) symptomatic epilepsy and epileptic syndromes with simple partial "
        "seizures, intractable, without status epilepticus",
        ago(2000),
    )
    c.order(med("28439", "lamotrigine 100 MG Oral Tablet"), ago(500), dose=text_dosage("150 mg by mouth twice daily"),
            supply_days=30, repeats=5)
    order = c.draft(med("1308430"), dosage(6, 1, "6 mg (two 3 mg tablets) as oral suspension once daily"),
                    quantity=60, reason=primary)
    return Sample(
        name,
        "HIM member, 15, TSC focal seizures on lamotrigine, generic tablets for oral suspension -> every I.F "
        "criterion met but HIM refers I.F (and the product) to HIM.PA.103",
        request_for(name, c),
        expect(order, "I.F", "refer", IF_ALL_MET, lob="him", refer="HIM.PA.103"),
    )


def ig_liver_met() -> Sample:
    name = "I.G-liver-transplant-met"
    c = Chart("ig-liver")
    c.patient("Barnaby", "Quillfeather", "male", "1974-05-30")
    c.prescriber("Parveen", "Hollingworth", TRANSPLANT_HEPATOLOGY, "Example Liver Transplant Program")
    c.coverage("him")
    primary = c.condition(ICD10, "Z94.4", "Liver transplant status", ago(53), category="encounter-diagnosis")
    c.order(med("42316", "tacrolimus 1 MG Oral Capsule"), ago(50), dose=text_dosage("2 mg by mouth twice daily"),
            supply_days=30, repeats=2)
    c.order(med("8640", "prednisone 5 MG Oral Tablet"), ago(50), dose=text_dosage("5 mg by mouth once daily"),
            supply_days=30, repeats=2)
    order = c.draft(med("2056895"), dosage(1, 2, "1 mg by mouth twice daily"), quantity=60, reason=primary)
    return Sample(
        name,
        "Liver transplant 53 days ago on reduced tacrolimus + prednisone, transplant hepatologist, generic 1 mg "
        "twice daily, HIM -> I.G met via I.G.7.b, 6 months",
        request_for(name, c),
        expect(order, "I.G", "met",
               "I.G.1 met, I.G.2 met, I.G.3 met, I.G.4 met, I.G.5 met, I.G.6 met, I.G.7 met, I.G.7.a not-met, "
               "I.G.7.b met",
               lob="him", months=6),
    )


def ig_kidney_missing_basiliximab() -> Sample:
    name = "I.G-kidney-missing-basiliximab"
    c = Chart("ig-kidney")
    c.patient("Wilhelmina", "Sarraceno", "female", "1982-02-25")
    c.prescriber("Dorian", "Achebe-Lund", NEPHROLOGY, "Example Kidney Transplant Center")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "Z94.0", "Kidney transplant status", ago(21), category="encounter-diagnosis")
    c.order(med("42316", "tacrolimus 1 MG Oral Capsule"), ago(21), status="completed",
            dose=text_dosage("4 mg by mouth twice daily (stopped day 15: nephrotoxicity)"))
    c.order(med("3008", "cyclosporine 100 MG Oral Capsule (modified)"), ago(6),
            dose=text_dosage("75 mg by mouth twice daily (reduced dose)"), supply_days=30)
    c.statement(med("8640", "prednisone 5 MG Oral Tablet"), ago(20), status="active")
    order = c.draft(med("977438"), dosage(0.75, 2, "0.75 mg by mouth twice daily"), quantity=60, reason=primary)
    return Sample(
        name,
        "Kidney transplant 21 days ago, tacrolimus stopped for nephrotoxicity, now cyclosporine + prednisone but no "
        "basiliximab (Simulect), nephrologist, generic 0.75 mg twice daily, Medicaid -> I.G.7 not-met, not-met; "
        "basiliximab is not suggested after the transplant (the card asks to document the induction)",
        request_for(name, c),
        expect(order, "I.G", "not-met",
               "I.G.1 met, I.G.2 met, I.G.3 met, I.G.4 met, I.G.5 met, I.G.6 met, I.G.7 not-met, "
               "I.G.7.a not-met, I.G.7.b not-met",
               lob="medicaid", months=6),
    )


# ----------------------------------------------------------------------------- I.H, I.I


def ih_criteria(a_i: str = "not-met", **changes: str) -> str:
    """I.H with each alternative of I.H.2 not met unless changed; 1 and 3-6 met."""
    a = "met" if a_i == "met" else "not-met"
    base = statuses(
        f"I.H.1 met, I.H.2 not-met, I.H.2.a {a}, I.H.2.a.i {a_i}, I.H.2.a.ii not-met, I.H.2.a.iii not-met, "
        "I.H.2.b not-met, I.H.2.c not-met, I.H.2.d not-met, I.H.2.e not-met, I.H.2.f not-met, "
        "I.H.3 met, I.H.4 met, I.H.5 met, I.H.6 met"
    )
    base.update({k.replace("_", "."): v for k, v in changes.items()})
    if "met" in (base["I.H.2.a"], base["I.H.2.b"], base["I.H.2.c"], base["I.H.2.d"], base["I.H.2.e"],
                 base["I.H.2.f"]):
        base["I.H.2"] = "met"
    return ", ".join(f"{k} {v}" for k, v in base.items())


def ih_gist_with_imatinib() -> Sample:
    name = "I.H-gist-with-imatinib"
    c = Chart("ih-gist")
    c.patient("Cornelius", "Aldersey", "male", "1965-09-14")
    c.prescriber("Tomasz", "Wierzbicki", ONCOLOGY, "Example Sarcoma Center")
    c.coverage("commercial")
    primary = c.condition(ICD10, "C49.A2", "Gastrointestinal stromal tumor of stomach", ago(2080))
    c.condition(ICD10, "C78.7", "Secondary malignant neoplasm of liver and intrahepatic bile duct", ago(1500))
    c.statement(med("282388", "imatinib 400 MG Oral Tablet"), ago(2060), ago(1400))
    c.statement(med("357977", "sunitinib 50 MG Oral Capsule"), ago(1390), ago(990))
    c.statement(med("1312397", "regorafenib 40 MG Oral Tablet"), ago(980), ago(510))
    c.statement(free_text_med("Qinlock (ripretinib) 50 mg tablets, 150 mg once daily"), ago(500), ago(40))
    order = c.draft(med("998189"), dosage(2.5, 1, "2.5 mg by mouth once daily with imatinib"), quantity=30,
                    repeats=5, reason=primary)
    c.draft(med("282388", "imatinib 400 MG Oral Tablet"), text_dosage("400 mg by mouth once daily with food"),
            quantity=30)
    return Sample(
        name,
        "GIST progressing after imatinib, sunitinib, regorafenib and ripretinib (text-only record), generic 2.5 mg + "
        "imatinib re-challenge, commercial, 30 days x 6 -> I.H.2.c met, met, 6 months",
        request_for(name, c),
        expect(order, "I.H", "met", ih_criteria(I_H_2_c="met"), lob="commercial", months=6),
    )


def ih_osteosarcoma_without_sorafenib() -> Sample:
    name = "I.H-osteosarcoma-without-sorafenib"
    c = Chart("ih-osteo")
    c.patient("Rafferty", "Elstone", "male", "2004-02-17")
    c.prescriber("Tomasz", "Wierzbicki", ONCOLOGY, "Example Sarcoma Center")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "C40.21", "Malignant neoplasm of long bones of right lower limb", ago(900))
    c.condition(ICD10, "C78.01", "Secondary malignant neoplasm of right lung", ago(120))
    order = c.draft(med("845515"), dosage(5, 1, "5 mg by mouth once daily"), quantity=30, reason=primary)
    return Sample(
        name,
        "Relapsed osteosarcoma with lung metastases, generic 5 mg without sorafenib, Medicaid -> I.H.2.e not-met, "
        "not-met; suggests adding sorafenib 200 MG Oral Tablet, 400 mg daily",
        request_for(name, c),
        expect(order, "I.H", "not-met", ih_criteria(), lob="medicaid", months=6, codes=("597747",),
               names=("sorafenib",)),
    )


def ih_hodgkin_single_agent() -> Sample:
    name = "I.H-hodgkin-single-agent"
    c = Chart("ih-hl")
    c.patient("Imogen", "Castlereagh", "female", "1992-01-03")
    c.prescriber("Nkechi", "Abernathy-Cole", HEM_ONC, "Example Lymphoma Program")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "C81.12", "Nodular sclerosis Hodgkin lymphoma, intrathoracic lymph nodes", ago(1400))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Relapsed classical Hodgkin lymphoma, generic 10 mg as single agent, hematologist-oncologist, Medicaid -> "
        "I.H.2.a met, met, 6 months",
        request_for(name, c),
        expect(order, "I.H", "met", ih_criteria(a_i="met"), lob="medicaid", months=6),
    )


def ii_off_label_commercial() -> Sample:
    name = "I.I-off-label-commercial"
    c = Chart("ii-heart")
    c.patient("Montgomery", "Fairweather", "male", "1969-04-04")
    c.prescriber("Lucinda", "Harrowgate", TRANSPLANT_SURGERY, "Example Heart Transplant Program")
    c.coverage("commercial")
    primary = c.condition(ICD10, "Z94.1", "Heart transplant status", ago(620), category="encounter-diagnosis")
    c.order(med("42316", "tacrolimus 1 MG Oral Capsule"), ago(60), dose=text_dosage("1 mg by mouth twice daily"),
            supply_days=30, repeats=2)
    order = c.draft(med("977438"), dosage(0.75, 2, "0.75 mg by mouth twice daily (CNI-sparing, renal insufficiency)"),
                    quantity=60, reason=primary)
    return Sample(
        name,
        "Heart transplant (Appendix D: off-label), generic 0.75 mg twice daily, commercial -> I.I, refer CP.CPA.09",
        request_for(name, c),
        expect(order, "I.I", "refer", II_REFER, lob="commercial", refer="CP.CPA.09"),
    )


def ii_off_label_him() -> Sample:
    name = "I.I-off-label-him"
    c = Chart("ii-kidney-net")
    c.patient("Evangeline", "Stroud-Maddox", "female", "1977-11-29")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example GU Oncology")
    c.coverage("him")
    primary = c.condition(ICD10, "C7A.093", "Malignant carcinoid tumor of the kidney", ago(200))
    c.condition(ICD10, "C7B.02", "Secondary carcinoid tumors of liver", ago(70))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "NET of the kidney (not an I.B origin) with liver metastases, generic 10 mg, HIM -> I.I, refer HIM.PA.154",
        request_for(name, c),
        expect(order, "I.I", "refer", II_REFER, lob="him", refer="HIM.PA.154"),
    )


# ----------------------------------------------------------------------------- II continued therapy


def iia_dose_increase() -> Sample:
    name = "II.A-continued-dose-increase"
    c = Chart("iia-up")
    primary = breast_chart(c, given="Georgiana", family="Pemberton-Ash", born="1959-08-16", lob="medicaid",
                           prior_until=135)
    c.statement(med("845515"), ago(128), status="active", dose=dosage(5, 1, "5 mg by mouth once daily"))
    c.order(med("258494", "exemestane 25 MG Oral Tablet"), ago(128), dose=text_dosage("25 mg by mouth once daily"),
            supply_days=30, repeats=5)
    order = c.draft(med("845507"), dosage(10, 1, "10 mg by mouth once daily (back to full dose, stomatitis resolved)"),
                    quantity=30, reason=primary)
    return Sample(
        name,
        "On generic everolimus 5 mg for 128 days with exemestane, now 10 mg daily (dose increase within limits), "
        "Medicaid -> II.A, II.A.4 met, II.A.2 (response) unknown, incomplete, 12 months",
        request_for(name, c),
        expect(order, "II.A", "incomplete",
               "II.A.1 met, II.A.2 unknown, II.A.3 met, II.A.4 met, II.A.4.a met, II.A.4.a.i met, II.A.4.a.ii met, "
               "II.A.4.a.iii met, II.A.4.b unknown",
               lob="medicaid", months=12),
    )


def iib_off_label() -> Sample:
    name = "II.B-continued-off-label"
    c = Chart("iib-heart")
    c.patient("Thaddeus", "Blackwood-Ince", "male", "1971-06-21")
    c.prescriber("Lucinda", "Harrowgate", TRANSPLANT_SURGERY, "Example Heart Transplant Program")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "Z94.1", "Heart transplant status", ago(1200), category="encounter-diagnosis")
    c.order(med("977438"), ago(283), dose=dosage(0.75, 2, "0.75 mg by mouth twice daily"), supply_days=30, repeats=11)
    order = c.draft(med("977438"), dosage(0.75, 2, "0.75 mg by mouth twice daily"), quantity=60, reason=primary)
    return Sample(
        name,
        "Heart transplant recipient on everolimus for 283 days (off-label), renewal, Medicaid -> II.B, refer "
        "CP.PMN.53",
        request_for(name, c),
        expect(order, "II.B", "refer", "II.B.1 unknown, II.B.1.a unknown, II.B.1.b unknown, II.B.2 met",
               lob="medicaid", refer="CP.PMN.53"),
    )


# ----------------------------------------------------------------------------- issue 7: messy real-world charts


def ie_tsc_infant_brain_tumour() -> Sample:
    name = "I.E-tsc-infant-below-age"
    c = Chart("ie-infant")
    c.patient("Odile", "Brackenbury", "female", "2025-12-28")  # 10 months old on 2026-11-20
    c.prescriber("Nkechi", "Abernathy-Cole", PEDS_HEM_ONC, "Example Children's Neuro-Oncology")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "2026-02-01")
    primary = c.condition(ICD10, "D43.0", "Neoplasm of uncertain behavior of brain, supratentorial", ago(40))
    order = c.draft(med("1308428"), dosage(2, 1, "2 mg as oral suspension once daily"), quantity=30, reason=primary)
    return Sample(
        name,
        "10-month-old with TSC and a brain neoplasm (D43.0), generic tablets for oral suspension -> I.E (the specific "
        "suggestion, not I.D's 'Age >= 18'), I.E.4 not-met (age >= 1), not-met",
        request_for(name, c),
        expect(order, "I.E", "not-met", "I.E.1 met, I.E.2 unknown, I.E.3 met, I.E.4 not-met, I.E.5 met",
               lob="medicaid", months=6),
    )


def if_tsc_toddler_focal() -> Sample:
    name = "I.F-tsc-toddler-below-age"
    c = Chart("if-toddler")
    c.patient("Ptolemy", "Harrowgate", "male", "2025-03-14")  # 1 year 8 months
    c.prescriber("Anselm", "Kovacevic", CHILD_NEURO, "Example Pediatric Epilepsy Center")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "2025-06-01")
    primary = c.condition(
        ICD10,
        "G40.109",
        "Localization-related (focal) (partial) symptomatic epilepsy and epileptic syndromes with simple partial "
        "seizures, not intractable, without status epilepticus",
        ago(120),
    )
    c.order(med("32624", "oxcarbazepine 300 MG Oral Tablet"), ago(100), dose=text_dosage("150 mg by mouth twice daily"),
            supply_days=30, repeats=5)
    order = c.draft(med("1308428"), dosage(2, 1, "2 mg as oral suspension once daily"), quantity=30, reason=primary)
    return Sample(
        name,
        "Toddler (1 y 8 m) with TSC focal seizures on oxcarbazepine, child neurologist -> I.F (not I.E's 'record "
        "the SEGA'), I.F.4 not-met (age >= 2), not-met",
        request_for(name, c),
        expect(order, "I.F", "not-met", "I.F.1 met, I.F.2 met, I.F.3 met, I.F.4 not-met, I.F.5 met, I.F.6 met",
               lob="medicaid", months=6),
    )


def tsc_alone() -> Sample:
    name = "TSC-alone-which-manifestation"
    c = Chart("tsc-only")
    c.patient("Winifred", "Ashcombe", "female", "1992-04-18")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example Tuberous Sclerosis Clinic")
    c.coverage("medicaid")
    c.condition(SNOMED, "7199000", "Tuberous sclerosis syndrome (disorder)", "1995-01-10")
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30)
    return Sample(
        name,
        "Adult with TSC only (SNOMED), generic 10 mg -> I.D shown with diagnosisOptions I.D/I.E/I.F: the card asks "
        "which manifestation is treated; incomplete",
        request_for(name, c),
        expect(order, "I.D", "incomplete",
               "I.D.1 met, I.D.2 unknown, I.D.3 met, I.D.4 met, I.D.5 met," + dose_tree("I.D.6"),
               lob="medicaid", months=6),
    )


def no_diagnosis() -> Sample:
    name = "no-diagnosis-on-file"
    c = Chart("nodx")
    c.patient("Evander", "Moorcroft", "male", "1968-09-02")
    c.prescriber("Rosalind", "Teague", ONCOLOGY, "Example Cancer Center")
    c.coverage("commercial")
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30)
    return Sample(
        name,
        "Nothing on the problem list and no reason on the order -> no pathway, incomplete: the card asks for the "
        "diagnosis and lists the covered indications (not 'off-label')",
        request_for(name, c),
        {"order": order, "pathway": None, "decision": "incomplete", "lineOfBusiness": "commercial", "criteria": {}},
    )


def meningioma_chart(key: str) -> tuple[Chart, str]:
    c = Chart(key)
    c.patient("Leopold", "Garrowby", "male", "1961-02-11")
    c.prescriber("Rosalind", "Teague", ONCOLOGY, "Example Neuro-Oncology")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "D32.9", "Benign neoplasm of meninges, unspecified", ago(400))
    return c, primary


def ih_meningioma_short_acting_octreotide() -> Sample:
    name = "I.H-meningioma-short-acting-octreotide"
    c, primary = meningioma_chart("ih-men-sa")
    c.order(med("312068", "1 ML octreotide 0.05 MG/ML Injection"), ago(60),
            dose=text_dosage("50 mcg subcutaneously three times a day"), supply_days=30, repeats=2)
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Meningioma with short-acting octreotide injection solution (not the LAR the policy names), generic 10 mg "
        "-> I.H.2.f not-met, not-met (no false 'approvable')",
        request_for(name, c),
        expect(order, "I.H", "not-met", ih_criteria(**{"I.H.2": "not-met", "I.H.2.f": "not-met"}),
               lob="medicaid", months=6),
    )


def ih_meningioma_lar() -> Sample:
    name = "I.H-meningioma-octreotide-lar"
    c, primary = meningioma_chart("ih-men-lar")
    c.order(med("898589", "octreotide 20 MG Injection"), ago(60),
            dose=text_dosage("20 mg intramuscularly every 4 weeks"), supply_days=28, repeats=2)
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Meningioma on octreotide LAR depot (Sandostatin LAR Depot kit, RxNorm 898589), generic 10 mg -> I.H met",
        request_for(name, c),
        expect(order, "I.H", "met", ih_criteria(**{"I.H.2": "met", "I.H.2.f": "met"}), lob="medicaid", months=6),
    )


def ig_liver_missing_tacrolimus() -> Sample:
    name = "I.G-liver-missing-companions"
    c = Chart("ig-liver-no-tac")
    c.patient("Marisol", "Eddington", "female", "1969-12-01")
    c.prescriber("Parveen", "Hollingworth", TRANSPLANT_HEPATOLOGY, "Example Liver Transplant Program")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "Z94.4", "Liver transplant status", ago(90))
    order = c.draft(med("2056895"), dosage(1, 2, "1 mg by mouth twice daily"), quantity=60, reason=primary)
    return Sample(
        name,
        "Liver transplant 90 days ago, nothing else ordered -> I.G.7 not-met; suggests reduced-dose tacrolimus and "
        "prednisone only (no kidney regimen)",
        request_for(name, c),
        expect(order, "I.G", "not-met",
               "I.G.1 met, I.G.2 met, I.G.3 met, I.G.4 met, I.G.5 met, I.G.6 met, I.G.7 not-met, I.G.7.a not-met, "
               "I.G.7.b not-met",
               lob="medicaid", months=6, codes=("198377", "312617"), names=("tacrolimus", "prednisone")),
    )


def ia_snomed_only_three_tablets() -> Sample:
    name = "I.A-snomed-only-three-tablets"
    c = Chart("ia-snomed")
    primary = breast_chart(c, given="Philippa", family="Dunmore", born="1958-08-08", lob="medicaid")
    for condition in c.resources["conditions"]:
        if condition["id"] == primary:
            condition["code"] = concept(SNOMED, "254837009", "Malignant tumor of breast")
    exemestane_draft(c)
    order = c.draft(med("845518"), dosage(15, 1, "15 mg (three 5 mg tablets) by mouth once daily"), quantity=90)
    return Sample(
        name,
        "Breast cancer coded in SNOMED only, brand Afinitor 5 mg x 3 tablets a day -> I.A.7 and I.A.9.a.ii not-met; "
        "one suggestion: the same 15 mg as 2 x 7.5 mg generic (1119400)",
        request_for(name, c),
        expect(order, "I.A", "not-met",
               ia_criteria(dose=dose_tree("I.A.9", ii="not-met"), **{"I.A.7": "not-met", "I.A.9": "unknown"}),
               lob="medicaid", months=6, codes=("1119400",)),
    )


# ----------------------------------------------------------------------------- issue #14: morphology, conflicts, notes

ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"


def problem(chart: Chart, cid: str) -> dict[str, Any]:
    """The Condition ``cid`` of a chart, to add what the builder does not (extensions, body site, notes)."""
    return next(r for r in chart.resources["conditions"] if r["id"] == cid)


def ie_sega_icdo3_morphology() -> Sample:
    name = "I.E-sega-icdo3-morphology"
    c = Chart("ie-icdo")
    c.patient("Marisol", "Quenneville", "female", "2018-04-22")
    c.prescriber("Nkechi", "Abernathy-Cole", PEDS_HEM_ONC, "Example Children's Neuro-Oncology")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "2018-08-30")
    primary = c.condition(ICDO3, "9384/1", "Subependymal giant cell astrocytoma", ago(60))
    order = c.draft(med("1308428"), dosage(4, 1, "4 mg (two 2 mg tablets) as oral suspension once daily"),
                    quantity=60, repeats=5, reason=primary)
    return Sample(
        name,
        "8-year-old with TSC and SEGA coded by its ICD-O-3 morphology (9384/1; ICD-10-CM has no SEGA code), generic "
        "tablets for oral suspension 4 mg/day, Medicaid -> I.E.2 met, met",
        request_for(name, c),
        expect(order, "I.E", "met", "I.E.1 met, I.E.2 met, I.E.3 met, I.E.4 met, I.E.5 met", lob="medicaid", months=6),
    )


def ic_rcc_papillary_histology() -> Sample:
    name = "I.C-rcc-papillary-histology"
    c = Chart("ic-papillary")
    c.patient("Osric", "Thandeka-Lowe", "male", "1961-05-30")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example GU Oncology")
    c.coverage("him")
    primary = c.condition(ICD10, "C64.1", "Malignant neoplasm of right kidney, except renal pelvis", ago(140))
    problem(c, primary)["extension"] = [
        {"url": HISTOLOGY, "valueCodeableConcept": concept(ICDO3, "8260/3", "Papillary adenocarcinoma, NOS")}
    ]
    c.condition(ICD10, "C78.01", "Secondary malignant neoplasm of right lung", ago(90))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Metastatic RCC with papillary histology in the mCODE histology extension (ICD-O-3 8260/3 on the C64.1 "
        "Condition), no prior therapy, generic 10 mg, HIM -> I.C.6 met (not clear cell), met",
        request_for(name, c),
        expect(order, "I.C", "met", ic_criteria(), lob="him", months=6),
    )


def ib_carcinoid_conflicting_origin() -> Sample:
    name = "I.B-carcinoid-conflicting-origin"
    c = Chart("ib-conflict")
    c.patient("Perpetua", "Lindqvist-Obi", "female", "1966-10-03")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example Thoracic Oncology")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "C7A.098", "Malignant carcinoid tumors of other sites", ago(200))
    problem(c, primary)["code"]["coding"].append(
        {"system": SNOMED, "code": "254627002", "display": "Carcinoid tumor of lung"}
    )
    c.condition(ICD10, "C7B.02", "Secondary carcinoid tumors of liver", ago(90))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "One Condition coded both C7A.098 (carcinoid of other sites: not lung) and SNOMED carcinoid of lung, liver "
        "metastases, generic 10 mg, Medicaid -> the codes disagree: I.B.2.c unknown (not met by the favourable "
        "code), I.B.2 unknown, incomplete",
        request_for(name, c),
        expect(order, "I.B", "incomplete", ib_criteria(I_B_2="unknown"), lob="medicaid", months=6),
    )


def id_tsc_aml_no_immediate_surgery_note() -> Sample:
    name = "I.D-tsc-aml-no-immediate-surgery-note"
    c = Chart("id-note")
    c.patient("Henrike", "Adeyemi-Ross", "female", "1994-02-14")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example Tuberous Sclerosis Clinic")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "1996-05-01")
    primary = c.condition(SNOMED, "254921004", "Angiomyolipoma of kidney", ago(120))
    problem(c, primary)["note"] = [
        {"text": "Bilateral renal AMLs, largest 4.2 cm, asymptomatic; not requiring immediate surgery. "
                 "Start mTOR inhibitor."}
    ]
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Adult with TSC and renal angiomyolipoma whose Condition note says 'not requiring immediate surgery', generic "
        "10 mg, Medicaid -> I.D.2 met (the sentence is quoted on the card), met",
        request_for(name, c),
        expect(order, "I.D", "met", "I.D.1 met, I.D.2 met, I.D.3 met, I.D.4 met, I.D.5 met," + dose_tree("I.D.6"),
               lob="medicaid", months=6),
    )


# ----------------------------------------------------------------------------- issue 14: procedures, dose, safety

KIDNEY_TRANSPLANT = ("70536003", "Transplant of kidney")


def ig_kidney_scheduled() -> Sample:
    name = "I.G-kidney-scheduled-transplant"
    c = Chart("ig-kidney-planned")
    c.patient("Osric", "Penhallow", "male", "1977-03-14")
    c.prescriber("Dorian", "Achebe-Lund", NEPHROLOGY, "Example Kidney Transplant Center")
    c.coverage("medicaid")
    c.condition(ICD10, "Z76.82", "Awaiting organ transplant status", ago(120), category="encounter-diagnosis")
    c.procedure(SNOMED, *KIDNEY_TRANSPLANT, "preparation", after(5))
    order = c.draft(med("977438"), dosage(0.75, 2, "0.75 mg by mouth twice daily"), quantity=60)
    return Sample(
        name,
        "Awaiting a transplant (Z76.82) with a kidney transplant Procedure planned in 5 days (preparation), nothing "
        "else ordered, nephrologist, Medicaid -> I.G.2 met (scheduled), I.G.5 unknown (no tacrolimus failure on "
        "record), I.G.7 not-met; suggests the kidney regimen only (basiliximab before the surgery, cyclosporine, "
        "prednisone)",
        request_for(name, c),
        expect(order, "I.G", "not-met",
               "I.G.1 met, I.G.2 met, I.G.3 met, I.G.4 met, I.G.5 unknown, I.G.6 met, I.G.7 not-met, "
               "I.G.7.a not-met, I.G.7.b not-met",
               lob="medicaid", months=6, codes=("196102", "835894", "312617"),
               names=("basiliximab", "cyclosporine", "prednisone")),
    )


def ia_two_drafts_25mg() -> Sample:
    name = "I.A-two-drafts-25mg"
    c = Chart("ia-two-drafts")
    primary = breast_chart(c, given="Henrietta", family="Coldwater", born="1963-06-21", lob="commercial")
    order = c.draft(med("845507"), dosage(10, 2, "10 mg by mouth twice daily"), quantity=60, reason=primary)
    second = c.draft(med("845515"), dosage(5, 1, "5 mg by mouth once daily"), quantity=30, reason=primary)
    exemestane_draft(c)
    return Sample(
        name,
        "Two generic everolimus drafts signed together, 10 mg twice daily + 5 mg daily (25 mg, 3 tablets a day), "
        "otherwise complete, commercial -> I.A.9.a.i and ii not-met for the member's day, I.A.9 unknown, incomplete; "
        "no fewer-tablets suggestion (none fits the total)",
        request_for(name, c),
        expect(order, "I.A", "incomplete", ia_criteria(dose=dose_tree("I.A.9", i="not-met", ii="not-met")),
               lob="commercial", months=3, also={second: "I.A.9.a.i not-met, I.A.9.a.ii not-met"}),
    )


def ia_exemestane_intolerance() -> Sample:
    name = "I.A-exemestane-intolerance-no-suggestion"
    c = Chart("ia-exe-intol")
    primary = breast_chart(c, given="Cordelia", family="Ashby-Vane", born="1959-02-17", lob="medicaid")
    c.allergy(med("258494"), "intolerance", "low", ago(200))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Generic everolimus 10 mg alone after letrozole; the chart records an active exemestane intolerance (low "
        "criticality), Medicaid -> I.A.8 not-met; exemestane is NOT suggested (the card says why: fulvestrant or "
        "tamoxifen remain the prescriber's choice)",
        request_for(name, c),
        expect(order, "I.A", "not-met", ia_criteria(I_A_8="not-met"), lob="medicaid", months=6),
    )


def ig_kidney_long_ago_no_induction() -> Sample:
    name = "I.G-kidney-transplanted-long-ago-no-induction"
    c = Chart("ig-kidney-old")
    c.patient("Lucasta", "Fenwright", "female", "1968-09-09")
    c.prescriber("Dorian", "Achebe-Lund", NEPHROLOGY, "Example Kidney Transplant Center")
    c.coverage("medicaid")
    primary = c.condition(ICD10, "Z94.0", "Kidney transplant status", ago(2900), category="encounter-diagnosis")
    c.procedure(SNOMED, *KIDNEY_TRANSPLANT, "completed", ago(2900))
    c.order(med("42316", "tacrolimus 1 MG Oral Capsule"), ago(400), status="completed",
            dose=text_dosage("3 mg by mouth twice daily (stopped: biopsy-proven calcineurin toxicity)"))
    c.order(med("3008", "cyclosporine 100 MG Oral Capsule (modified)"), ago(30),
            dose=text_dosage("75 mg by mouth twice daily (reduced dose)"), supply_days=30)
    c.statement(med("8640", "prednisone 5 MG Oral Tablet"), ago(2890), status="active")
    order = c.draft(med("977438"), dosage(0.75, 2, "0.75 mg by mouth twice daily"), quantity=60, reason=primary)
    return Sample(
        name,
        "Kidney transplanted 8 years ago (Procedure + Z94.0), on cyclosporine + prednisone after tacrolimus "
        "toxicity, no basiliximab on record, Medicaid -> I.G.7.a not-met; basiliximab induction (before the "
        "surgery) is NOT suggested: the card asks for documentation of the induction instead",
        request_for(name, c),
        expect(order, "I.G", "not-met",
               "I.G.1 met, I.G.2 met, I.G.3 met, I.G.4 met, I.G.5 met, I.G.6 met, I.G.7 not-met, "
               "I.G.7.a not-met, I.G.7.b not-met",
               lob="medicaid", months=6),
    )


# ----------------------------------------------------------------------------- issue 14: the whole therapy record

II_A_MET = (
    "II.A.1 met, II.A.2 met, II.A.3 met, II.A.4 met, II.A.4.a met, II.A.4.a.i met, II.A.4.a.ii met, "
    "II.A.4.a.iii met, II.A.4.b unknown"
)
STABLE = ("359746009", "Patient's condition stable (finding)")
WORSENED = ("271299001", "Patient's condition worsened (finding)")


def monthly_fills(chart: Chart, medication: dict[str, Any], *days_ago: int) -> None:
    """30-day fills of 10 mg once daily handed over on each of ``days_ago``."""
    for days in days_ago:
        chart.dispense(medication, ago(days), 30, dose=ten_mg_daily())


def iia_responding_met() -> Sample:
    name = "II.A-continued-responding-met"
    c = Chart("iia-resp")
    primary = breast_chart(c, given="Marguerite", family="Oakhampton", born="1962-04-03", lob="medicaid",
                           prior_until=190)
    monthly_fills(c, med("845507"), 180, 150, 120, 90, 60, 30)
    c.disease_status(*STABLE, ago(21))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "Pharmacy fills only (six 30-day dispenses of generic 10 mg, no order or statement on file) and an mCODE "
        "disease status 'stable' 3 weeks ago, same dose, Medicaid -> II.A met, 12 months",
        request_for(name, c),
        expect(order, "II.A", "met", II_A_MET, lob="medicaid", months=12),
    )


def iia_progression() -> Sample:
    name = "II.A-progression-not-met"
    c = Chart("iia-prog")
    primary = breast_chart(c, given="Ottilie", family="Ravensworth", born="1957-12-19", lob="commercial",
                           prior_until=250)
    c.statement(med("845507"), ago(240), status="active", dose=ten_mg_daily())
    c.disease_status(*STABLE, ago(150))
    c.disease_status(*WORSENED, ago(12))
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "On generic everolimus 10 mg for 240 days; stable at 3 months, worsened (progression) 12 days ago, renewal, "
        "commercial -> II.A with II.A.2 not met (the latest assessment decides), not-met",
        request_for(name, c),
        expect(order, "II.A", "not-met", II_A_MET.replace("II.A.2 met", "II.A.2 not-met"), lob="commercial",
               months=3),
    )


def iia_dispense_only_renewal() -> Sample:
    name = "II.A-dispense-only-renewal"
    c = Chart("iia-disp")
    c.patient("Rosamund", "Thistlewood", "female", "1994-05-30")
    c.prescriber("Ingrid", "Solvang", ONCOLOGY, "Example Tuberous Sclerosis Clinic")
    c.coverage("medicaid")
    c.condition(ICD10, "Q85.1", "Tuberous sclerosis", "1996-03-02")
    primary = c.condition(SNOMED, "254921004", "Angiomyolipoma of kidney", ago(700))
    generic = med("845507")
    # An earlier course (a year ago, 3 fills) ended long before this one: it is history, not the current course.
    monthly_fills(c, generic, 420, 390, 360)
    c.dispense(generic, ago(100), 30, status="cancelled", dose=ten_mg_daily())
    monthly_fills(c, generic, 95, 62, 30)  # the second fill 3 days late: still one course
    order = c.draft(med("845507"), ten_mg_daily(), quantity=30, reason=primary)
    return Sample(
        name,
        "TSC with renal angiomyolipoma, everolimus known only from pharmacy fills: an old course a year ago, then "
        "fills 95, 62 and 30 days ago (one cancelled fill ignored) -> II.A (90 covered days of the current course) with "
        "II.A.2 unknown (no response assessment), incomplete",
        request_for(name, c),
        expect(order, "II.A", "incomplete", II_A_MET.replace("II.A.2 met", "II.A.2 unknown"), lob="medicaid",
               months=12),
    )


def iib_epilepsy_without_tsc() -> Sample:
    name = "II.B-epilepsy-without-tsc"
    c = Chart("iib-epi")
    c.patient("Barnaby", "Quillfeather", "male", "2009-02-14")
    c.prescriber("Anselm", "Kovacevic", EPILEPSY, "Example Comprehensive Epilepsy Center")
    c.coverage("commercial")
    primary = c.condition(
        ICD10,
        "G40.119",
        "Localization-related (focal) (partial) symptomatic epilepsy and epileptic syndromes with simple partial "
        "seizures, intractable, without status epilepticus",
        ago(1500),
    )
    tablets = med("1308432")
    for days in (120, 90, 60, 30):
        c.dispense(tablets, ago(days), 30, dose=dosage(5, 1, "5 mg as oral suspension once daily"))
    order = c.draft(med("1308432"), dosage(5, 1, "5 mg as oral suspension once daily"), quantity=30, reason=primary)
    return Sample(
        name,
        "Focal epilepsy with no TSC on record, on everolimus suspension for 120 days (fills), renewal, commercial -> "
        "II.B (partial-onset seizures are a covered indication only with TSC), refer CP.CPA.09; the card says to "
        "record TSC if the member has it",
        request_for(name, c),
        expect(order, "II.B", "refer", "II.B.1 unknown, II.B.1.a unknown, II.B.1.b unknown, II.B.2 met",
               lob="commercial", refer="CP.CPA.09"),
    )


SAMPLES: tuple[Callable[[], Sample], ...] = (
    ia_met,
    ia_brand_without_exemestane,
    ia_her2_positive,
    ia_dose_over_limit,
    ia_specialty_undocumented,
    ia_recurrent_fulvestrant,
    ia_dispense_as_written,
    ia_no_coverage,
    under_18_breast,
    him_brand_disperz,
    ib_lung_unresectable,
    commercial_short_request,
    ic_clear_cell_no_prior,
    ic_after_cabozantinib,
    id_tsc_renal_aml,
    ie_sega_child,
    if_seizures_adjunctive,
    if_him_refer,
    ig_liver_met,
    ig_kidney_missing_basiliximab,
    ih_gist_with_imatinib,
    ih_osteosarcoma_without_sorafenib,
    ih_hodgkin_single_agent,
    ii_off_label_commercial,
    ii_off_label_him,
    iia_dose_increase,
    iib_off_label,
    order_select_preview,
    order_select_other,
    no_everolimus,
    ie_tsc_infant_brain_tumour,
    if_tsc_toddler_focal,
    tsc_alone,
    no_diagnosis,
    ih_meningioma_short_acting_octreotide,
    ih_meningioma_lar,
    ig_liver_missing_tacrolimus,
    ia_snomed_only_three_tablets,
    ie_sega_icdo3_morphology,
    ic_rcc_papillary_histology,
    ib_carcinoid_conflicting_origin,
    id_tsc_aml_no_immediate_surgery_note,
    iia_responding_met,
    iia_progression,
    iia_dispense_only_renewal,
    iib_epilepsy_without_tsc,
    ig_kidney_scheduled,
    ia_two_drafts_25mg,
    ia_exemestane_intolerance,
    ig_kidney_long_ago_no_induction,
)

README_HEAD = """\
# Sample CDS Hooks requests (CP.PHAR.63, everolimus)

Complete `order-sign` / `order-select` requests a user can post to the service or run without a server.
Each carries a fixed `hookInstance`, `context` (the signing `PractitionerRole`, the patient, the draft orders
as a `collection` Bundle) and `prefetch` under the service's discovery keys (`patient`, `coverage`,
`conditions`, `medicationStatements`, `medicationRequests`, `medicationDispenses`, `observations`,
`diseaseStatus`, `practitionerRole` with the Practitioner as an `_include` entry, `allergies`, `procedures`);
there is no `fhirServer`, so nothing is fetched.

All people, identifiers and organisations are fictional. Clinical codes come only from
`fhir_mappings/tables/*.csv` and `shared/reference/codes.csv`. Every order is authored on 2026-11-20; chart
dates are relative to it. Lines of business follow the Coverage plan prefix (`MCD-` Medicaid, `HIM-` Health
Insurance Marketplace, `COM-` commercial).

    curl -s -H 'Content-Type: application/json' \\
         --data @sample_bundles/I.A-brand-without-exemestane.json \\
         http://127.0.0.1:8080/cds-services/everolimus-order-sign | python3 -m json.tool
    .venv/bin/priorauth-cds evaluate sample_bundles/I.A-brand-without-exemestane.json

(`order-select-*.json` go to `/cds-services/everolimus-order-select`; `priorauth-cds evaluate` picks the
service from the request's `hook`.)

`expected.json` holds, per file, the evaluation the policy text and `cds_service/policies/cp-phar-63/policy.yaml`
call for: pathway, decision, line of business, approval months, referral, every criterion's status, and the
RxNorm codes / names of the one-click suggestions (all of them: a file without `suggestCodes` expects none).
`tests/test_sample_bundles.py` checks the service against it. The files are generated by
`tools/make_samples.py` (edit the definitions there, then run it; `--check` verifies the committed output).

| file | what it shows -> expected outcome |
|---|---|
"""


def build_all() -> list[Sample]:
    samples = [make() for make in SAMPLES]
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate sample names")
    return samples


def render(samples: list[Sample]) -> dict[str, str]:
    """File name -> exact text to write."""
    files = {f"{s.name}.json": json.dumps(s.request, indent=1, ensure_ascii=False) + "\n" for s in samples}
    expected = {f"{s.name}.json": s.expected for s in sorted(samples, key=lambda s: s.name)}
    files["expected.json"] = json.dumps(expected, indent=1, ensure_ascii=False) + "\n"
    rows = [f"| `{s.name}.json` | {s.shows} |" for s in sorted(samples, key=lambda s: s.name)]
    files["README.md"] = README_HEAD + "\n".join(rows) + "\n"
    return files


def stale_files(files: dict[str, str], out_dir: Path) -> list[str]:
    """Files that differ from what would be written, plus sample JSON that no definition produces."""
    stale = [name for name, text in files.items() if not (out_dir / name).is_file()
             or (out_dir / name).read_text(encoding="utf-8") != text]
    stale += [p.name for p in out_dir.glob("*.json") if p.name not in files]
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate sample_bundles/ (CP.PHAR.63 sample hook requests).")
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default sample_bundles/)")
    args = parser.parse_args(argv)
    files = render(build_all())
    if args.check:
        stale = stale_files(files, args.out)
        for name in stale:
            print(f"out of date: {name}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.json"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
