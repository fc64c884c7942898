"""CP.PHAR.63 as encoded in cds_service/policies/cp-phar-63/policy.yaml: every criterion, pathway selection, durations.

Facts are built by hand (``make_facts``) so these tests pin the policy file, not the FHIR mapping. The
status table drives every criterion id of the loaded policy to each status it can take; a coverage test
keeps the table in step with the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from cds_service.policy.engine import (
    Policy,
    PolicyVocabulary,
    approval_months,
    evaluate,
    evaluate_pathway,
    load_policy,
    notes_for,
)
from cds_service.policy.results import CriterionResult, Decision, Fix, OrderEvaluation, Status
from fhir_mappings.model import Conflict, Dose, Facts, Finding, LineOfBusiness, Product, QualifierFinding

MET, NOT_MET, UNKNOWN = Status.MET, Status.NOT_MET, Status.UNKNOWN
MEDICAID, HIM, COMMERCIAL = LineOfBusiness.MEDICAID, LineOfBusiness.HIM, LineOfBusiness.COMMERCIAL
EVAL_DATE = date(2026, 11, 20)

# The tag vocabulary the brief fixes for Facts mappings (the code tables define at least these).
DIAGNOSIS_TAGS = [
    "breast-cancer",
    "secondary-malignancy",
    "metastatic-stage",
    "net-pancreas",
    "net-gi",
    "net-lung",
    "net-thymus",
    "net-unspecified-origin",
    "rcc",
    "rcc-clear-cell",
    "rcc-non-clear-cell",
    "tsc",
    "renal-angiomyolipoma",
    "sega",
    "partial-onset-seizures",
    "kidney-transplant",
    "liver-transplant",
    "heart-transplant",
    "hodgkin-lymphoma",
    "wm-lpl",
    "thymoma",
    "thymic-carcinoma",
    "pecoma",
    "angiomyolipoma",
    "lam",
    "histiocytic-neoplasm",
    "endometrial-carcinoma",
    "gist",
    "dtc",
    "osteosarcoma",
    "meningioma",
    "functional-carcinoid",
    "high-immunologic-risk",
    "benign-kidney-neoplasm",
]
RECEPTOR_TAGS = [
    "er-positive",
    "er-negative",
    "pr-positive",
    "pr-negative",
    "her2-positive",
    "her2-negative",
    "hr-positive",
]
SPECIALTY_TAGS = ["oncology", "neurology", "nephrology", "hepatology", "transplant"]
INGREDIENT_TAGS = [
    "exemestane",
    "fulvestrant",
    "tamoxifen",
    "toremifene",
    "anastrozole",
    "letrozole",
    "megestrol",
    "fluoxymesterone",
    "ethinyl-estradiol",
    "tacrolimus",
    "cyclosporine",
    "basiliximab",
    "prednisone",
    "prednisolone",
    "methylprednisolone",
    "imatinib",
    "sunitinib",
    "regorafenib",
    "ripretinib",
    "sorafenib",
    "bevacizumab",
    "octreotide",
    "octreotide-lar",
    "pazopanib",
    "nivolumab",
    "ipilimumab",
    "aldesleukin",
    "cabozantinib",
    "temsirolimus",
    "axitinib",
    "lenvatinib",
    "erlotinib",
    "sirolimus",
    "everolimus",
    "endocrine-therapy",
    "rcc-prior-therapy",
    "corticosteroid",
    "anti-seizure",
    "calcineurin-inhibitor",
    "antineoplastic",
]
VOCAB = PolicyVocabulary(
    frozenset(DIAGNOSIS_TAGS), frozenset(INGREDIENT_TAGS), frozenset(SPECIALTY_TAGS), frozenset(RECEPTOR_TAGS)
)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(vocabulary=VOCAB)


# ----------------------------------------------------------------------------- products (RxNorm per codes.csv)


def _product(
    rxcui: str | None,
    display: str,
    family: str | None,
    brand: bool | None,
    mg: float | None,
    form: str | None,
    generic: str | None,
    generic_display: str | None,
    available: bool = True,
) -> Product:
    return Product(rxcui, display, family, brand, mg, form, generic, generic_display, available)


GENERIC_10 = _product(
    "845507",
    "everolimus 10 MG Oral Tablet",
    "afinitor",
    False,
    10,
    "tablet",
    "845507",
    "everolimus 10 MG Oral Tablet",
)
BRAND_10 = _product(
    "845512",
    "everolimus 10 MG Oral Tablet [Afinitor]",
    "afinitor",
    True,
    10,
    "tablet",
    "845507",
    "everolimus 10 MG Oral Tablet",
)
BRAND_NO_GENERIC = replace(BRAND_10, generic_available=False, generic_rxcui=None, generic_display=None)
DISPERZ_GENERIC_5 = _product(
    "1308432",
    "everolimus 5 MG Tablet for Oral Suspension",
    "afinitor-disperz",
    False,
    5,
    "tablet-for-suspension",
    "1308432",
    "everolimus 5 MG Tablet for Oral Suspension",
)
DISPERZ_BRAND_5 = _product(
    "1310147",
    "everolimus 5 MG Tablet for Oral Suspension [Afinitor Disperz]",
    "afinitor-disperz",
    True,
    5,
    "tablet-for-suspension",
    "1308432",
    "everolimus 5 MG Tablet for Oral Suspension",
)
ZORTRESS_GENERIC_075 = _product(
    "977438",
    "everolimus 0.75 MG Oral Tablet",
    "zortress",
    False,
    0.75,
    "tablet",
    "977438",
    "everolimus 0.75 MG Oral Tablet",
)
ZORTRESS_BRAND_075 = _product(
    "977440",
    "everolimus 0.75 MG Oral Tablet [Zortress]",
    "zortress",
    True,
    0.75,
    "tablet",
    "977438",
    "everolimus 0.75 MG Oral Tablet",
)
UNKNOWN_PRODUCT = _product(None, "everolimus", None, None, None, None, None, None, False)
BRANDS = {
    "afinitor": BRAND_10,
    "afinitor-disperz": DISPERZ_BRAND_5,
    "zortress": ZORTRESS_BRAND_075,
}


# ----------------------------------------------------------------------------- the Facts factory


def _found(tags: Iterable[str], resource: str, start: date | None = None) -> dict[str, Finding]:
    return {tag: Finding((f"{resource}/{tag}",), start) for tag in tags}


def make_facts(
    *,
    product: Product = GENERIC_10,
    mg: float | None = 10.0,
    tablets: float | None = 1.0,
    age: int | None = 57,
    diagnoses: Iterable[str] = (),
    possible: Iterable[str] = (),
    receptors: Iterable[str] = (),
    specialties: Iterable[str] = ("oncology",),
    co: Iterable[str] = (),
    history: Iterable[str] = (),
    history_start: date = date(2026, 1, 5),
    days: int = 0,
    previous: float | None = None,
    exception: bool = False,
    lob: LineOfBusiness | None = MEDICAID,
    requested: int | None = None,
    qualifiers: Iterable[QualifierFinding] = (),
    conflicts: Iterable[tuple[str, str]] = (),
    response: str | None = None,
    unavailable: Iterable[str] = (),
) -> Facts:
    """Hand-built facts; each finding's evidence names its tag (``Condition/breast-cancer``)."""
    return Facts(
        order_ref="MedicationRequest/order-1",
        evaluation_date=EVAL_DATE,
        product=product,
        dose=Dose(mg, tablets),
        age_years=age,
        age_evidence=("Patient/p1",) if age is not None else (),
        diagnoses=_found(diagnoses, "Condition"),
        possible_diagnoses=_found(possible, "Condition"),
        receptors=_found(receptors, "Observation"),
        specialties=_found(specialties, "PractitionerRole"),
        requester_ref="PractitionerRole/r1",
        co_medications=_found(co, "MedicationRequest"),
        medication_history=_found(history, "MedicationStatement", history_start),
        days_on_drug=days,
        drug_evidence=("MedicationStatement/everolimus",) if days else (),
        previous_mg_per_day=previous,
        generic_exception=Finding(("AllergyIntolerance/generic",)) if exception else None,
        line_of_business=lob,
        line_of_business_evidence=("Coverage/c1",) if lob else (),
        requested_months=requested,
        coverage_ref="Coverage/c1" if lob else None,
        qualifiers=tuple(qualifiers),
        diagnosis_conflicts=_conflicts(conflicts),
        therapy_response=response,
        therapy_response_evidence=("Observation/status",) if response else (),
        unavailable=frozenset(unavailable),
    )


def _conflicts(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[Conflict, ...]]:
    """Each pair of exclusive tags coded on Condition/conflict: "the codes disagree"."""
    out: dict[str, tuple[Conflict, ...]] = {}
    for a, b in pairs:
        conflict = Conflict((a, b), ("Condition/conflict",), f"Condition/conflict codes both {a} and {b}")
        out[a] = (*out.get(a, ()), conflict)
        out[b] = (*out.get(b, ()), conflict)
    return out


def said(qualifier: str, about: str, contrary: bool = False) -> QualifierFinding:
    """A qualifier phrase read from Condition/<about>'s note."""
    return QualifierFinding(
        qualifier, f"Condition/{about}", f"Condition/{about} note: '...'", contrary, frozenset({about})
    )


#: Facts under which every criterion of each pathway that can be met is met (the starting point of each row).
BASES: dict[str, dict[str, Any]] = {
    "I.A": {
        "diagnoses": ("breast-cancer", "secondary-malignancy"),
        "receptors": ("er-positive", "her2-negative"),
        "co": ("exemestane",),
        "history": ("letrozole", "endocrine-therapy"),
    },
    "I.B": {"diagnoses": ("net-pancreas", "metastatic-stage")},
    "I.C": {"diagnoses": ("rcc", "secondary-malignancy"), "history": ("sunitinib", "rcc-prior-therapy")},
    "I.D": {"diagnoses": ("renal-angiomyolipoma", "tsc")},
    "I.E": {"diagnoses": ("sega", "tsc"), "age": 6},
    "I.F": {
        "diagnoses": ("partial-onset-seizures", "tsc"),
        "age": 8,
        "product": DISPERZ_GENERIC_5,
        "mg": 5.0,
        "specialties": ("neurology",),
        "co": ("anti-seizure",),
    },
    "I.G": {
        "diagnoses": ("kidney-transplant",),
        "product": ZORTRESS_GENERIC_075,
        "mg": 1.5,
        "tablets": 2.0,
        "specialties": ("nephrology",),
        "co": ("basiliximab", "cyclosporine", "corticosteroid"),
        "history": ("tacrolimus",),
    },
    "I.H": {"diagnoses": ("endometrial-carcinoma",), "co": ("letrozole",)},
    "I.I": {},
    "II.A": {"diagnoses": ("breast-cancer",), "days": 120, "previous": 10.0, "response": "responding"},
    "II.B": {"days": 120},
    "III": {},
}


def facts_for(pathway: str, **overrides: Any) -> Facts:
    return make_facts(**{**BASES[pathway], **overrides})


def pathway_of(cid: str) -> str:
    parts = cid.split(".")
    return parts[0] if parts[0] == "III" else ".".join(parts[:2])


def find(criteria: Iterable[CriterionResult], cid: str) -> CriterionResult:
    for top in criteria:
        for criterion in top.walk():
            if criterion.id == cid:
                return criterion
    raise KeyError(cid)


def statuses(ev: OrderEvaluation) -> dict[str, Status]:
    return {c.id: c.status for c in ev.all_criteria()}


# ----------------------------------------------------------------------------- the status table

Row = tuple[str, Status, dict[str, Any]]
ROWS: list[Row] = []


def rows(cid: str, *cases: tuple[Status, dict[str, Any]]) -> None:
    ROWS.extend((cid, status, overrides) for status, overrides in cases)


def product_rows(cid: str, other: Product) -> None:
    rows(cid, (MET, {}), (NOT_MET, {"product": other}), (UNKNOWN, {"product": UNKNOWN_PRODUCT}))


def specialty_rows(cid: str, met: str = "oncology", other: str = "nephrology") -> None:
    rows(cid, (MET, {"specialties": (met,)}), (UNKNOWN, {"specialties": (other,)}), (UNKNOWN, {"specialties": ()}))


def age_rows(cid: str, years: int) -> None:
    rows(cid, (MET, {"age": years}), (NOT_MET, {"age": years - 1}), (UNKNOWN, {"age": None}))


def generic_rows(cid: str, family: str) -> None:
    brand = BRANDS[family]
    rows(
        cid,
        (MET, {}),
        (NOT_MET, {"product": brand}),
        (UNKNOWN, {"product": brand, "exception": True}),
        (UNKNOWN, {"product": UNKNOWN_PRODUCT}),
    )
    if family == "afinitor":
        rows(cid, (MET, {"product": BRAND_NO_GENERIC}))


def dose_rows(prefix: str) -> None:
    """The "(a or b)" dose block shared by I.A.9, I.B.7, I.C.7, I.D.6 and II.A.4.a/b."""
    rows(f"{prefix}.a", (MET, {}), (NOT_MET, {"mg": 30.0}), (UNKNOWN, {"mg": None}))
    rows(f"{prefix}.a.i", (MET, {"mg": 20.0}), (NOT_MET, {"mg": 20.5}), (UNKNOWN, {"mg": None}))
    rows(
        f"{prefix}.a.ii",
        (MET, {"tablets": 2.0}),
        (NOT_MET, {"tablets": 3.0}),
        (UNKNOWN, {"tablets": None}),
        (UNKNOWN, {"product": UNKNOWN_PRODUCT}),
        (MET, {"product": DISPERZ_GENERIC_5, "tablets": 3.0}),  # the Afinitor limit does not apply to Disperz
    )
    rows(
        f"{prefix}.a.iii",
        (MET, {"tablets": 9.0}),  # Afinitor tablets: the Disperz limit does not apply
        (MET, {"product": DISPERZ_GENERIC_5, "tablets": 4.0}),
        (NOT_MET, {"product": DISPERZ_GENERIC_5, "tablets": 5.0}),
        (UNKNOWN, {"product": DISPERZ_GENERIC_5, "tablets": None}),
    )
    rows(f"{prefix}.b", (UNKNOWN, {}))


AFINITOR = "afinitor"

# I.A Breast cancer
product_rows("I.A.1", ZORTRESS_GENERIC_075)
rows("I.A.1", (MET, {"product": DISPERZ_GENERIC_5}))
rows(
    "I.A.2",
    (MET, {}),
    (MET, {"diagnoses": ("breast-cancer", "metastatic-stage")}),
    (UNKNOWN, {"diagnoses": ("breast-cancer",)}),
    (UNKNOWN, {"diagnoses": ("secondary-malignancy",), "possible": ("breast-cancer",)}),
)
specialty_rows("I.A.3")
age_rows("I.A.4", 18)
rows(
    "I.A.5",
    (MET, {}),
    (MET, {"receptors": ("pr-positive", "her2-negative")}),
    (MET, {"receptors": ("hr-positive", "her2-negative")}),
    (MET, {"receptors": ("er-negative", "pr-positive", "her2-negative")}),
    (NOT_MET, {"receptors": ("er-positive", "her2-positive")}),
    (NOT_MET, {"receptors": ("er-negative", "pr-negative", "her2-negative")}),
    (NOT_MET, {"receptors": ("er-positive", "her2-negative", "her2-positive")}),
    (UNKNOWN, {"receptors": ("her2-negative",)}),
    (UNKNOWN, {"receptors": ("er-negative", "her2-negative")}),  # PR untested: may still be HR-positive
    (UNKNOWN, {"receptors": ("er-positive",)}),
    (UNKNOWN, {"receptors": ()}),
)
rows(
    "I.A.6",
    (MET, {}),
    (MET, {"history": ("tamoxifen",)}),
    (UNKNOWN, {"history": ()}),
    (UNKNOWN, {"history_start": EVAL_DATE}),  # started with this order: not a history
)
generic_rows("I.A.7", AFINITOR)
rows(
    "I.A.8",
    (MET, {}),
    (MET, {"co": ("fulvestrant",)}),
    (MET, {"co": ("tamoxifen",)}),
    (NOT_MET, {"co": ()}),
    (NOT_MET, {"co": ("letrozole",)}),
)
rows("I.A.9", (MET, {}), (UNKNOWN, {"mg": 30.0}), (UNKNOWN, {"mg": None}))
dose_rows("I.A.9")

# I.B Neuroendocrine tumor
product_rows("I.B.1", ZORTRESS_BRAND_075)
rows(
    "I.B.2",
    (MET, {}),
    (UNKNOWN, {"diagnoses": ("net-unspecified-origin", "metastatic-stage")}),
    (UNKNOWN, {"diagnoses": ("metastatic-stage",), "possible": ("net-lung",)}),
)
for letter, tag in zip("abcd", ("net-pancreas", "net-gi", "net-lung", "net-thymus")):
    rows(
        f"I.B.2.{letter}",
        (MET, {"diagnoses": (tag, "metastatic-stage")}),
        (UNKNOWN, {"diagnoses": ("net-unspecified-origin",), "possible": (tag,)}),
        (UNKNOWN, {"diagnoses": ("net-unspecified-origin",)}),
    )
rows(
    "I.B.3",
    (MET, {}),
    (MET, {"diagnoses": ("net-gi", "secondary-malignancy")}),
    (UNKNOWN, {"diagnoses": ("net-pancreas",)}),
    (MET, {"diagnoses": ("net-pancreas",), "qualifiers": (said("locally-advanced", "net-pancreas"),)}),
    (MET, {"diagnoses": ("net-pancreas",), "qualifiers": (said("unresectable", "net-pancreas"),)}),
    (UNKNOWN, {"diagnoses": ("net-pancreas",), "qualifiers": (said("unresectable", "rcc"),)}),
    (UNKNOWN, {"diagnoses": ("net-pancreas",), "qualifiers": (said("unresectable", "net-pancreas", True),)}),
)
rows(
    "I.B.2.c",
    (UNKNOWN, {"diagnoses": ("net-unspecified-origin",), "possible": ("net-lung",), "conflicts": (("net-lung", "x"),)}),
)
specialty_rows("I.B.4")
age_rows("I.B.5", 18)
generic_rows("I.B.6", AFINITOR)
rows("I.B.7", (MET, {}), (UNKNOWN, {"mg": 25.0}))
dose_rows("I.B.7")

# I.C Renal cell carcinoma
product_rows("I.C.1", ZORTRESS_GENERIC_075)
rows(
    "I.C.2",
    (MET, {}),
    (UNKNOWN, {"diagnoses": ("rcc",)}),
    (UNKNOWN, {"possible": ("rcc",), "diagnoses": ("secondary-malignancy",)}),
    (MET, {"diagnoses": ("rcc",), "qualifiers": (said("unresectable", "rcc"),)}),
    (UNKNOWN, {"diagnoses": ("rcc",), "qualifiers": (said("locally-advanced", "rcc"),)}),
)
specialty_rows("I.C.3")
age_rows("I.C.4", 18)
generic_rows("I.C.5", AFINITOR)
rows(
    "I.C.6",
    (MET, {}),  # histology unknown, but a prior therapy on record satisfies it either way
    (UNKNOWN, {"history": ()}),  # histology unknown and no prior therapy: may be clear cell
    (MET, {"diagnoses": ("rcc", "rcc-non-clear-cell"), "history": ()}),
    (UNKNOWN, {"diagnoses": ("rcc", "rcc-clear-cell"), "history": ()}),
    (MET, {"diagnoses": ("rcc", "rcc-clear-cell"), "history": ("cabozantinib",)}),
    # clear cell and papillary both coded: the "if" is unknown, never "not clear cell" by default
    (
        UNKNOWN,
        {
            "diagnoses": ("rcc",),
            "possible": ("rcc-clear-cell", "rcc-non-clear-cell"),
            "conflicts": (("rcc-clear-cell", "rcc-non-clear-cell"),),
            "history": (),
        },
    ),
)
rows("I.C.7", (MET, {}), (UNKNOWN, {"mg": 40.0}))
dose_rows("I.C.7")

# I.D Renal angiomyolipoma with TSC
product_rows("I.D.1", ZORTRESS_GENERIC_075)
rows(
    "I.D.2",
    (UNKNOWN, {}),  # the need for surgery is only in notes: unknown without a listed phrase
    (UNKNOWN, {"diagnoses": ("renal-angiomyolipoma",)}),
    (MET, {"qualifiers": (said("no-immediate-surgery", "renal-angiomyolipoma"),)}),
    (MET, {"qualifiers": (said("no-immediate-surgery", "benign-kidney-neoplasm"),)}),
    (UNKNOWN, {"qualifiers": (said("no-immediate-surgery", "tsc"),)}),  # said of another diagnosis
    (UNKNOWN, {"qualifiers": (said("no-immediate-surgery", "renal-angiomyolipoma", True),)}),
    (
        UNKNOWN,
        {
            "qualifiers": (
                said("no-immediate-surgery", "renal-angiomyolipoma"),
                said("no-immediate-surgery", "renal-angiomyolipoma", True),
            )
        },
    ),
    (UNKNOWN, {"diagnoses": ("tsc",), "qualifiers": (said("no-immediate-surgery", "renal-angiomyolipoma"),)}),
)
specialty_rows("I.D.3")
age_rows("I.D.4", 18)
generic_rows("I.D.5", AFINITOR)
rows("I.D.6", (MET, {}), (UNKNOWN, {"mg": 30.0}))
dose_rows("I.D.6")

# I.E SEGA with TSC
product_rows("I.E.1", ZORTRESS_GENERIC_075)
rows("I.E.2", (MET, {}), (UNKNOWN, {"diagnoses": ("tsc",), "possible": ("sega",)}), (UNKNOWN, {"diagnoses": ("sega",)}))
specialty_rows("I.E.3", other="neurology")
age_rows("I.E.4", 1)
generic_rows("I.E.5", AFINITOR)

# I.F TSC-associated partial-onset seizures
rows("I.F.1", (MET, {}), (NOT_MET, {"product": GENERIC_10}), (UNKNOWN, {"product": UNKNOWN_PRODUCT}))
rows(
    "I.F.2",
    (MET, {}),
    (UNKNOWN, {"diagnoses": ("partial-onset-seizures",)}),
    (UNKNOWN, {"diagnoses": ("tsc",), "possible": ("partial-onset-seizures",)}),
)
specialty_rows("I.F.3", met="neurology", other="nephrology")
rows("I.F.3", (MET, {"specialties": ("oncology",)}))
age_rows("I.F.4", 2)
rows("I.F.5", (MET, {}), (UNKNOWN, {"co": ()}))
generic_rows("I.F.6", "afinitor-disperz")

# I.G Prophylaxis of organ rejection
LIVER = {
    "diagnoses": ("liver-transplant",),
    "co": ("tacrolimus", "prednisone"),
    "history": (),
    "specialties": ("hepatology",),
}
rows("I.G.1", (MET, {}), (NOT_MET, {"product": GENERIC_10}), (UNKNOWN, {"product": UNKNOWN_PRODUCT}))
rows("I.G.2", (MET, {}), (MET, LIVER), (UNKNOWN, {"diagnoses": (), "possible": ("kidney-transplant",)}))
specialty_rows("I.G.3", met="nephrology", other="oncology")
rows("I.G.3", (MET, {"specialties": ("transplant",)}), (MET, {"specialties": ("hepatology",)}))
age_rows("I.G.4", 18)
rows("I.G.5", (MET, {}), (MET, LIVER), (UNKNOWN, {"history": ()}))
generic_rows("I.G.6", "zortress")
rows(
    "I.G.7",
    (MET, {}),
    (MET, LIVER),
    (NOT_MET, {"co": ("basiliximab", "cyclosporine")}),
    (NOT_MET, {**LIVER, "co": ("tacrolimus",)}),
    (UNKNOWN, {"diagnoses": (), "possible": ("kidney-transplant",)}),
)
rows(
    "I.G.7.a",
    (MET, {}),
    (MET, {"co": ("basiliximab", "cyclosporine", "methylprednisolone")}),
    (NOT_MET, {"co": ("cyclosporine", "corticosteroid")}),
    (NOT_MET, LIVER),
    (UNKNOWN, {"diagnoses": (), "possible": ("kidney-transplant",)}),
)
rows(
    "I.G.7.b",
    (MET, LIVER),
    (NOT_MET, {**LIVER, "co": ("prednisone",)}),
    (NOT_MET, {}),  # a kidney transplant
    (UNKNOWN, {**LIVER, "diagnoses": (), "possible": ("liver-transplant",)}),
)

# I.H NCCN compendium indications
HL = {"diagnoses": ("hodgkin-lymphoma",), "co": ()}
rows("I.H.1", (MET, {}), (NOT_MET, {"product": ZORTRESS_GENERIC_075}), (UNKNOWN, {"product": UNKNOWN_PRODUCT}))
rows(
    "I.H.2",
    (MET, {}),
    (MET, HL),
    (NOT_MET, {"co": ()}),
    (NOT_MET, {**HL, "co": ("imatinib",)}),
    (UNKNOWN, {"diagnoses": (), "possible": ("endometrial-carcinoma",)}),
)
rows(
    "I.H.2.a",
    (MET, HL),
    (NOT_MET, {**HL, "co": ("letrozole",)}),
    (NOT_MET, {}),
    (UNKNOWN, {"diagnoses": (), "possible": ("thymoma",), "co": ()}),
)
for tag in ("hodgkin-lymphoma", "wm-lpl", "thymoma", "thymic-carcinoma"):
    rows("I.H.2.a.i", (MET, {"diagnoses": (tag,)}))
rows("I.H.2.a.i", (NOT_MET, {}), (UNKNOWN, {"possible": ("wm-lpl",)}))
rows(
    "I.H.2.a.ii",
    (MET, {"diagnoses": ("pecoma",)}),
    (MET, {"diagnoses": ("lam",)}),
    (NOT_MET, {}),
    (UNKNOWN, {"diagnoses": ("angiomyolipoma",)}),
    (UNKNOWN, {"possible": ("pecoma",)}),
    (MET, {"diagnoses": ("angiomyolipoma",), "qualifiers": (said("recurrent", "angiomyolipoma"),)}),
    (UNKNOWN, {"diagnoses": ("angiomyolipoma",), "qualifiers": (said("recurrent", "lam"),)}),
)
rows(
    "I.H.2.a.iii",
    (MET, {"diagnoses": ("histiocytic-neoplasm",)}),
    (NOT_MET, {}),
    (UNKNOWN, {"possible": ("histiocytic-neoplasm",)}),
)
rows(
    "I.H.2.b",
    (MET, {}),
    (NOT_MET, {"co": ()}),
    (NOT_MET, HL),
    (UNKNOWN, {"diagnoses": (), "possible": ("endometrial-carcinoma",)}),
)
GIST = {"diagnoses": ("gist",), "co": ("sunitinib",), "history": ("imatinib", "sunitinib", "regorafenib", "ripretinib")}
rows(
    "I.H.2.c",
    (MET, GIST),
    (MET, {**GIST, "co": ("imatinib",)}),
    (NOT_MET, {**GIST, "co": ()}),
    (NOT_MET, {}),
    (UNKNOWN, {**GIST, "history": ("imatinib", "sunitinib", "regorafenib")}),
)
rows("I.H.2.d", (MET, {"diagnoses": ("dtc",)}), (NOT_MET, {}), (UNKNOWN, {"possible": ("dtc",)}))
rows(
    "I.H.2.e",
    (MET, {"diagnoses": ("osteosarcoma",), "co": ("sorafenib",)}),
    (NOT_MET, {"diagnoses": ("osteosarcoma",)}),
    (UNKNOWN, {"diagnoses": (), "possible": ("osteosarcoma",), "co": ("sorafenib",)}),
)
rows(
    "I.H.2.f",
    (MET, {"diagnoses": ("meningioma",), "co": ("octreotide-lar",)}),
    (NOT_MET, {"diagnoses": ("meningioma",), "co": ("octreotide",)}),
    (MET, {"diagnoses": ("meningioma",), "co": ("bevacizumab",)}),
    (NOT_MET, {"diagnoses": ("meningioma",)}),
    (UNKNOWN, {"diagnoses": (), "possible": ("meningioma",), "co": ("bevacizumab",)}),
)
specialty_rows("I.H.3")
age_rows("I.H.4", 18)
generic_rows("I.H.5", AFINITOR)
rows("I.H.6", (MET, {}), (MET, {"mg": 20.0, "tablets": 4.0}), (UNKNOWN, {"mg": 25.0}), (UNKNOWN, {"mg": None}))

# I.I Other diagnoses (referral)
for cid in ("I.I.1", "I.I.1.a", "I.I.1.b"):
    rows(cid, (UNKNOWN, {}))
for cid in ("I.I.2", "II.B.2", "III.A"):
    rows(
        cid,
        (MET, {}),
        (MET, {"diagnoses": ("heart-transplant",)}),
        (NOT_MET, {"diagnoses": ("rcc",)}),
        (UNKNOWN, {"possible": ("gist",)}),
        (UNKNOWN, {"diagnoses": ("tsc",)}),
        (MET, {"diagnoses": ("partial-onset-seizures",)}),  # a covered indication only with TSC
        (UNKNOWN, {"diagnoses": ("partial-onset-seizures",), "possible": ("tsc",)}),
    )

# II.A Continued therapy
rows(
    "II.A.1",
    (MET, {}),
    (UNKNOWN, {"days": 20}),
    (UNKNOWN, {"diagnoses": (), "possible": ("breast-cancer",)}),
    (NOT_MET, {"diagnoses": ()}),
)
rows(
    "II.A.1",
    (NOT_MET, {"diagnoses": ("partial-onset-seizures",)}),  # focal epilepsy without TSC: not the indication
    (MET, {"diagnoses": ("partial-onset-seizures", "tsc")}),
    (UNKNOWN, {"diagnoses": ("partial-onset-seizures",), "possible": ("tsc",)}),
    (UNKNOWN, {"diagnoses": ("tsc",)}),  # TSC alone: which manifestation is treated
    (NOT_MET, {"diagnoses": ("renal-angiomyolipoma",)}),
    (MET, {"diagnoses": ("sega",)}),  # SEGA needs nothing more
)
rows(
    "II.A.2",
    (MET, {}),
    (MET, {"response": "responding"}),
    (NOT_MET, {"response": "progressing"}),
    (UNKNOWN, {"response": "undetermined"}),
    (UNKNOWN, {"response": None}),
)
generic_rows("II.A.3", AFINITOR)
rows(
    "II.A.4",
    (MET, {}),  # same dose
    (MET, {"previous": 5.0}),  # an increase within the limits
    (MET, {"previous": 10.0, "mg": 30.0, "diagnoses": ("sega", "tsc")}),  # SEGA is exempt from the dose rule
    (MET, {"previous": None}),  # increase unknown, but the dose is within limits anyway
    (UNKNOWN, {"previous": 10.0, "mg": 30.0}),  # an increase beyond 20 mg/day needs literature
    (UNKNOWN, {"previous": None, "mg": 30.0}),
    (UNKNOWN, {"previous": 10.0, "mg": 30.0, "possible": ("sega",)}),  # may be exempt: still unknown
)
dose_rows("II.A.4")

# II.B Continued therapy, other diagnoses (referral)
for cid in ("II.B.1", "II.B.1.a", "II.B.1.b"):
    rows(cid, (UNKNOWN, {}))


def _row_id(row: Row) -> str:
    cid, status, overrides = row
    return f"{cid}-{status.value}-" + ",".join(sorted(overrides)) if overrides else f"{cid}-{status.value}-base"


@pytest.mark.parametrize("cid,expected,overrides", ROWS, ids=[_row_id(r) for r in ROWS])
def test_criterion_status(policy: Policy, cid: str, expected: Status, overrides: dict[str, Any]) -> None:
    pathway = pathway_of(cid)
    result = evaluate_pathway(policy, pathway, facts_for(pathway, **overrides))
    assert find(result.criteria, cid).status is expected


#: Criteria only chart notes can satisfy: they are unknown whatever the coded record says.
ALWAYS_UNKNOWN = {
    "I.A.9.b",
    "I.B.7.b",
    "I.C.7.b",
    "I.D.6.b",
    "II.A.4.b",
    "I.I.1",
    "I.I.1.a",
    "I.I.1.b",
    "II.B.1",
    "II.B.1.a",
    "II.B.1.b",
}
#: Criteria that can never be not-met: a missing fact leaves them unknown, and no fact contradicts them.
NEVER_NOT_MET = {
    "I.D.2",
    "I.A.2",
    "I.A.3",
    "I.A.6",
    "I.A.9",
    "I.B.2",
    "I.B.2.a",
    "I.B.2.b",
    "I.B.2.c",
    "I.B.2.d",
    "I.B.3",
    "I.B.4",
    "I.B.7",
    "I.C.2",
    "I.C.3",
    "I.C.6",
    "I.C.7",
    "I.D.3",
    "I.D.6",
    "I.E.2",
    "I.E.3",
    "I.F.2",
    "I.F.3",
    "I.F.5",
    "I.G.2",
    "I.G.3",
    "I.G.5",
    "I.H.3",
    "I.H.6",
    "II.A.4",
}
#: Criteria the order set decides outright: a companion is ordered or active, or it is not.
NEVER_UNKNOWN = {"I.A.8"}


def test_the_table_covers_every_criterion_of_the_policy(policy: Policy) -> None:
    assert {row[0] for row in ROWS} == set(policy.criterion_ids())


def test_every_criterion_is_driven_to_each_status_it_can_take(policy: Policy) -> None:
    seen: dict[str, set[Status]] = {}
    for cid, status, _ in ROWS:
        seen.setdefault(cid, set()).add(status)
    for cid in policy.criterion_ids():
        if cid in ALWAYS_UNKNOWN:
            expected = {UNKNOWN}
        elif cid in NEVER_NOT_MET:
            expected = {MET, UNKNOWN}
        elif cid in NEVER_UNKNOWN:
            expected = {MET, NOT_MET}
        else:
            expected = {MET, NOT_MET, UNKNOWN}
        assert seen[cid] == expected, cid


# ----------------------------------------------------------------------------- the acceptance calibration


def test_a_brand_without_combination(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A", product=BRAND_10, co=(), history=("letrozole",)))
    assert (ev.pathway, ev.decision) == ("I.A", Decision.NOT_MET)
    s = statuses(ev)
    assert (s["I.A.7"], s["I.A.8"], s["I.A.5"], s["I.A.4"]) == (NOT_MET, NOT_MET, MET, MET)
    assert ev.fixes() == (
        Fix(kind="switch-to-generic", rxcui="845507", display="everolimus 10 MG Oral Tablet"),
        Fix(
            kind="add-companion",
            rxcui="310261",
            display="exemestane 25 MG Oral Tablet",
            sig="25 mg by mouth once daily",
            dose_mg=25.0,
            frequency_per_day=1,
        ),
    )


def test_a_met_generic_with_exemestane(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A"))
    assert (ev.pathway, ev.decision, ev.line_of_business, ev.approval_months) == ("I.A", Decision.MET, "medicaid", 6)
    assert all(statuses(ev)[f"I.A.{n}"] is MET for n in range(1, 10))
    assert ev.fixes() == ()
    assert (ev.policy, ev.policy_version, ev.pathway_title) == ("CP.PHAR.63", "02.25", "Breast Cancer")
    assert ev.evaluation_date == "2026-11-20" and ev.order_ref == "MedicationRequest/order-1"


def test_d_tsc_renal_angiomyolipoma_is_incomplete(policy: Policy) -> None:
    # TSC makes SEGA and seizures possible too; the confirmed renal AML wins the tie.
    ev = evaluate(policy, facts_for("I.D", possible=("sega", "partial-onset-seizures")))
    assert (ev.pathway, ev.decision) == ("I.D", Decision.INCOMPLETE)
    s = statuses(ev)
    assert s["I.D.2"] is UNKNOWN
    assert all(s[f"I.D.{n}"] is MET for n in (1, 3, 4, 5, 6))


def test_f_child_with_neurologist_and_generic_suspension(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.F", co=(), possible=("sega", "renal-angiomyolipoma")))
    assert ev.pathway == "I.F"
    s = statuses(ev)
    assert all(s[f"I.F.{n}"] is MET for n in (1, 3, 4, 6))
    assert s["I.F.5"] is UNKNOWN and ev.decision is Decision.INCOMPLETE


def test_g_brand_zortress_kidney(policy: Policy) -> None:
    ev = evaluate(
        policy, facts_for("I.G", product=ZORTRESS_BRAND_075, co=("basiliximab", "cyclosporine", "prednisone"))
    )
    assert (ev.pathway, ev.decision) == ("I.G", Decision.NOT_MET)
    s = statuses(ev)
    assert (s["I.G.2"], s["I.G.3"], s["I.G.5"], s["I.G.6"], s["I.G.7"]) == (MET, MET, MET, NOT_MET, MET)
    assert [f.rxcui for f in ev.fixes()] == ["977438"]


def test_h_endometrial_with_letrozole(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.H"))
    assert (ev.pathway, ev.decision, ev.approval_months) == ("I.H", Decision.MET, 6)


def test_i_other_diagnosis_medicaid(policy: Policy) -> None:
    ev = evaluate(policy, make_facts())
    assert (ev.pathway, ev.decision, ev.refer_to, ev.approval_months) == ("I.I", Decision.REFER, "CP.PMN.53", None)
    assert statuses(ev) == {"I.I.1": UNKNOWN, "I.I.1.a": UNKNOWN, "I.I.1.b": UNKNOWN, "I.I.2": MET}


@pytest.mark.parametrize(
    ("response", "decision", "ii_a_2"),
    [
        (None, Decision.INCOMPLETE, UNKNOWN),  # no assessment on record: the response may be in notes
        ("responding", Decision.MET, MET),
        ("progressing", Decision.NOT_MET, NOT_MET),  # documented progression is not-met, not incomplete
        ("undetermined", Decision.INCOMPLETE, UNKNOWN),
    ],
)
def test_ii_continued_same_dose(policy: Policy, response: str | None, decision: Decision, ii_a_2: Status) -> None:
    facts = facts_for("II.A", receptors=("er-positive", "her2-negative"), co=("exemestane",), response=response)
    ev = evaluate(policy, facts)
    assert (ev.pathway, ev.decision, ev.approval_months) == ("II.A", decision, 12)
    s = statuses(ev)
    assert (s["II.A.1"], s["II.A.2"], s["II.A.3"], s["II.A.4"]) == (MET, ii_a_2, MET, MET)
    assert find(ev.criteria, "II.A.1").evidence == ("MedicationStatement/everolimus", "Condition/breast-cancer")
    if response:
        assert find(ev.criteria, "II.A.2").evidence == ("Observation/status",)


def test_tsc_alone_continues_under_ii_a_naming_the_manifestation(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("II.A", diagnoses=("tsc",), possible=("renal-angiomyolipoma", "sega")))
    assert ev.pathway == "II.A"
    ii_a_1 = find(ev.criteria, "II.A.1")
    assert ii_a_1.status is UNKNOWN
    assert any("renal-angiomyolipoma" in gap or "renal angiomyolipoma" in gap for gap in ii_a_1.gaps), ii_a_1.gaps


@pytest.mark.parametrize(
    ("diagnoses", "possible", "pathway"),
    [
        (("partial-onset-seizures",), (), "II.B"),  # focal epilepsy, no TSC on record
        (("partial-onset-seizures", "tsc"), (), "II.A"),
        (("partial-onset-seizures",), ("tsc",), "II.A"),  # TSC only suggested: II.A, II.A.1 unknown
        (("renal-angiomyolipoma",), (), "II.B"),
        (("sega",), (), "II.A"),
        (("heart-transplant",), (), "II.B"),  # a use section I does not list
    ],
)
def test_continuation_needs_a_covered_indication(
    policy: Policy, diagnoses: tuple[str, ...], possible: tuple[str, ...], pathway: str
) -> None:
    assert evaluate(policy, facts_for("II.A", diagnoses=diagnoses, possible=possible)).pathway == pathway


def test_ii_b_for_epilepsy_without_tsc_says_what_makes_it_ii_a(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("II.B", diagnoses=("partial-onset-seizures",), lob=COMMERCIAL))
    assert (ev.pathway, ev.decision, ev.refer_to) == ("II.B", Decision.REFER, "CP.CPA.09")
    ii_b_2 = find(ev.criteria, "II.B.2")
    assert ii_b_2.status is MET and ii_b_2.note is not None
    assert "record the TSC diagnosis" in ii_b_2.note and "(I.F)" in ii_b_2.note


@pytest.mark.parametrize(
    ("response", "said", "expected"),
    [
        (None, True, MET),  # the chart is silent: the clinician's answer decides
        (None, False, NOT_MET),
        ("progressing", True, NOT_MET),  # a coded worsened assessment is not overridden by a "yes"
        ("responding", True, MET),
    ],
)
def test_dtr_answer_on_the_response(policy: Policy, response: str | None, said: bool, expected: Status) -> None:
    from fhir_mappings.model import Answer, AnswerValue

    answer = Answer("II.A.2", "QuestionnaireResponse/qr1", "manual", (AnswerValue(boolean=said),))
    facts = replace(facts_for("II.A", response=response), answers={"II.A.2": answer})
    criterion = find(evaluate(policy, facts).criteria, "II.A.2")
    assert criterion.status is expected
    if response == "progressing":
        assert criterion.note is not None and "contradicts" in criterion.note


def test_continuation_with_the_problem_list_missing_stays_ii_a(policy: Policy) -> None:
    """Conditions could not be read: the missing TSC may be on file, so the request is not pushed to II.B."""
    facts = facts_for("II.A", diagnoses=("partial-onset-seizures",), unavailable=("conditions",))
    ev = evaluate(policy, facts)
    assert ev.pathway == "II.A" and find(ev.criteria, "II.A.1").status is UNKNOWN


# ----------------------------------------------------------------------------- pathway selection


def test_best_decision_wins(policy: Policy) -> None:
    # Breast cancer on brand without exemestane is not met; the NET pathway is met.
    f = make_facts(
        product=GENERIC_10,
        diagnoses=("breast-cancer", "net-pancreas", "metastatic-stage"),
        receptors=("er-negative", "pr-negative"),
    )
    assert evaluate_pathway(policy, "I.A", f).decision is Decision.NOT_MET
    assert evaluate_pathway(policy, "I.B", f).decision is Decision.MET
    assert evaluate(policy, f).pathway == "I.B"


def test_incomplete_beats_not_met(policy: Policy) -> None:
    f = make_facts(diagnoses=("breast-cancer", "net-pancreas"), receptors=("her2-positive",))
    assert evaluate_pathway(policy, "I.A", f).decision is Decision.NOT_MET
    assert evaluate_pathway(policy, "I.B", f).decision is Decision.INCOMPLETE
    assert evaluate(policy, f).pathway == "I.B"


def test_ties_go_to_policy_order(policy: Policy) -> None:
    both = facts_for(
        "I.A", diagnoses=("breast-cancer", "rcc", "secondary-malignancy"), history=("letrozole", "sunitinib")
    )
    assert evaluate_pathway(policy, "I.A", both).decision is Decision.MET
    assert evaluate_pathway(policy, "I.C", both).decision is Decision.MET
    assert evaluate(policy, both).pathway == "I.A"
    brand = replace(both, co_medications={})
    assert evaluate(policy, brand).pathway == "I.C"  # I.A is now not met (no exemestane)


def test_ties_prefer_a_confirmed_diagnosis_over_a_possible_one(policy: Policy) -> None:
    # Confirmed seizures (I.F incomplete: adjunctive use undocumented) against possible SEGA (I.E incomplete).
    f = facts_for("I.F", co=(), possible=("sega",))
    assert evaluate_pathway(policy, "I.E", f).decision is Decision.INCOMPLETE
    assert evaluate_pathway(policy, "I.F", f).decision is Decision.INCOMPLETE
    assert evaluate(policy, f).pathway == "I.F"
    # With SEGA confirmed too, both links are firm and policy order decides.
    assert (
        evaluate(policy, facts_for("I.F", co=(), diagnoses=("sega", "partial-onset-seizures", "tsc"))).pathway == "I.E"
    )


def test_a_possible_diagnosis_is_enough_for_a_pathway(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A", diagnoses=("secondary-malignancy",), possible=("breast-cancer",)))
    assert (ev.pathway, ev.decision) == ("I.A", Decision.INCOMPLETE)
    assert statuses(ev)["I.A.2"] is UNKNOWN


def test_tsc_alone_suggests_its_pathways(policy: Policy) -> None:
    ev = evaluate(policy, make_facts(diagnoses=("tsc",)))
    assert ev.pathway == "I.D" and ev.decision is Decision.INCOMPLETE


def test_heart_transplant_is_off_label(policy: Policy) -> None:
    ev = evaluate(policy, make_facts(product=ZORTRESS_GENERIC_075, diagnoses=("heart-transplant",), lob=COMMERCIAL))
    assert (ev.pathway, ev.decision, ev.refer_to) == ("I.I", Decision.REFER, "CP.CPA.09")


@pytest.mark.parametrize(
    "lob,refer_to", [(MEDICAID, "CP.PMN.53"), (HIM, "HIM.PA.154"), (COMMERCIAL, "CP.CPA.09"), (None, None)]
)
def test_other_diagnoses_refer_per_line_of_business(
    policy: Policy, lob: LineOfBusiness | None, refer_to: str | None
) -> None:
    ev = evaluate(policy, make_facts(lob=lob))
    assert (ev.pathway, ev.decision, ev.refer_to, ev.approval_months) == ("I.I", Decision.REFER, refer_to, None)
    assert ev.line_of_business == (lob.value if lob else None)
    text = find(ev.criteria, "I.I.2").text  # the reader still sees every line's referral
    assert all(code in text for code in ("CP.CPA.09", "HIM.PA.154", "CP.PMN.53"))


def test_continued_therapy_from_thirty_days(policy: Policy) -> None:
    assert evaluate(policy, facts_for("II.A", days=30)).pathway == "II.A"
    assert evaluate(policy, facts_for("II.A", days=29)).pathway == "I.A"
    assert evaluate(policy, facts_for("II.A", diagnoses=(), possible=("rcc",))).pathway == "II.A"


@pytest.mark.parametrize(
    "lob,refer_to", [(MEDICAID, "CP.PMN.53"), (HIM, "HIM.PA.154"), (COMMERCIAL, "CP.CPA.09"), (None, None)]
)
def test_continued_therapy_without_a_section_i_diagnosis_refers(
    policy: Policy, lob: LineOfBusiness | None, refer_to: str | None
) -> None:
    ev = evaluate(policy, facts_for("II.B", lob=lob, diagnoses=("heart-transplant",)))
    assert (ev.pathway, ev.decision, ev.refer_to, ev.approval_months) == ("II.B", Decision.REFER, refer_to, None)
    assert statuses(ev)["II.B.2"] is MET


@pytest.mark.parametrize("base", ["I.A", "I.I", "II.A", "I.F"])
def test_him_brand_disperz_is_referred_whatever_the_pathway(policy: Policy, base: str) -> None:
    ev = evaluate(policy, facts_for(base, product=DISPERZ_BRAND_5, mg=10.0, lob=HIM))
    assert (ev.pathway, ev.decision, ev.refer_to, ev.approval_months) == (base, Decision.REFER, "HIM.PA.103", None)
    assert notes_for(policy, facts_for(base, product=DISPERZ_BRAND_5, lob=HIM)) == ()


def test_him_generic_disperz_is_referred_like_the_brand(policy: Policy) -> None:
    """The product (tablets for oral suspension) is non-formulary for HIM, brand or generic: both are referred,
    with the footnote as the reason (not "not addressed by CP.PHAR.63")."""
    f = facts_for("I.A", product=DISPERZ_GENERIC_5, mg=10.0, tablets=2.0, lob=HIM)
    ev = evaluate(policy, f)
    assert (ev.pathway, ev.decision, ev.refer_to, ev.approval_months) == ("I.A", Decision.REFER, "HIM.PA.103", None)
    assert ev.referral_reason is not None and "non-formulary" in ev.referral_reason
    assert notes_for(policy, f) == ()
    medicaid = evaluate(policy, replace(f, line_of_business=MEDICAID))
    assert (medicaid.decision, medicaid.referral_reason) == (Decision.MET, None)
    assert evaluate(policy, replace(f, product=GENERIC_10)).decision is Decision.MET


def test_brand_disperz_outside_him_is_judged_on_the_criteria(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A", product=DISPERZ_BRAND_5, mg=10.0, lob=MEDICAID))
    assert (ev.decision, ev.refer_to) == (Decision.NOT_MET, None)
    assert statuses(ev)["I.A.7"] is NOT_MET


def test_him_tsc_seizures_refer_to_the_formulary_exception_policy(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.F", lob=HIM))
    assert (ev.pathway, ev.decision, ev.refer_to, ev.approval_months) == ("I.F", Decision.REFER, "HIM.PA.103", None)
    assert statuses(ev)["I.F.1"] is MET  # the criteria are still reported
    assert evaluate(policy, facts_for("I.F", lob=MEDICAID)).decision is Decision.MET


# ----------------------------------------------------------------------------- approval durations


SIX: dict[LineOfBusiness, int | None] = {MEDICAID: 6, HIM: 6}
APPROVALS: dict[str, dict[LineOfBusiness, int | None]] = {
    "I.A": SIX,
    "I.B": SIX,
    "I.C": SIX,
    "I.D": SIX,
    "I.E": SIX,
    "I.F": {MEDICAID: 6, HIM: None},
    "I.G": SIX,
    "I.H": SIX,
    "II.A": {MEDICAID: 12, HIM: 12},
}


@pytest.mark.parametrize("pathway", sorted(APPROVALS))
@pytest.mark.parametrize("lob", [MEDICAID, HIM])
def test_approval_months_per_pathway(policy: Policy, pathway: str, lob: LineOfBusiness) -> None:
    assert approval_months(policy.pathway(pathway), lob, None) == APPROVALS[pathway][lob]
    assert approval_months(policy.pathway(pathway), lob, 3) == APPROVALS[pathway][lob]  # not capped by the request


@pytest.mark.parametrize("pathway", sorted(APPROVALS))
@pytest.mark.parametrize("requested,expected", [(None, 12), (0, 12), (1, 1), (3, 3), (12, 12), (24, 12)])
def test_commercial_is_twelve_months_or_the_request_whichever_is_less(
    policy: Policy, pathway: str, requested: int | None, expected: int
) -> None:
    assert approval_months(policy.pathway(pathway), COMMERCIAL, requested) == expected


def test_no_duration_without_a_line_of_business(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A", lob=None))
    assert (ev.decision, ev.approval_months, ev.line_of_business) == (Decision.MET, None, None)


@pytest.mark.parametrize(
    "base,lob,requested,expected",
    [
        ("I.A", COMMERCIAL, 3, 3),
        ("I.A", COMMERCIAL, None, 12),
        ("I.G", HIM, 3, 6),
        ("II.A", MEDICAID, 1, 12),
        ("II.A", COMMERCIAL, 5, 5),
        ("I.B", HIM, None, 6),
    ],
)
def test_evaluation_carries_the_duration(
    policy: Policy, base: str, lob: LineOfBusiness, requested: int | None, expected: int
) -> None:
    assert evaluate(policy, facts_for(base, lob=lob, requested=requested)).approval_months == expected


def test_not_met_still_states_the_duration_it_would_get(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A", product=BRAND_10))
    assert (ev.decision, ev.approval_months) == (Decision.NOT_MET, 6)


# ----------------------------------------------------------------------------- fixes


def _fixes(policy: Policy, base: str, **overrides: Any) -> list[tuple[str, str | None]]:
    return [(f.kind, f.rxcui) for f in evaluate(policy, facts_for(base, **overrides)).fixes()]


def test_companion_fixes_for_each_combination(policy: Policy) -> None:
    assert _fixes(policy, "I.H", co=()) == [("add-companion", "72965")]
    assert _fixes(policy, "I.H", **{**GIST, "co": ()}) == [("add-companion", "403879")]
    assert _fixes(policy, "I.H", diagnoses=("osteosarcoma",), co=()) == [("add-companion", "597747")]
    assert _fixes(policy, "I.H", diagnoses=("meningioma",), co=()) == []  # no dose in the policy: no companion
    assert _fixes(policy, "I.A", co=()) == [("add-companion", "310261")]


def test_no_companion_for_a_diagnosis_the_member_does_not_have(policy: Policy) -> None:
    # Hodgkin lymphoma given with letrozole: I.H.2.a is not met (not single agent); no letrozole/imatinib offers.
    assert _fixes(policy, "I.H", diagnoses=("hodgkin-lymphoma",), co=("letrozole",)) == []


def test_companion_fix_details(policy: Policy) -> None:
    (fix,) = evaluate(policy, facts_for("I.H", co=())).fixes()
    assert fix == Fix(
        kind="add-companion",
        rxcui="72965",
        display="letrozole",
        sig="2.5 mg by mouth once daily",
        dose_mg=2.5,
        frequency_per_day=1,
    )
    assert find(evaluate(policy, facts_for("I.H", co=())).criteria, "I.H.2.b").fixes == (fix,)


def test_switch_to_generic_for_each_product(policy: Policy) -> None:
    assert _fixes(policy, "I.A", product=BRAND_10) == [("switch-to-generic", "845507")]
    assert _fixes(policy, "I.G", product=ZORTRESS_BRAND_075) == [("switch-to-generic", "977438")]
    assert _fixes(policy, "I.F", product=DISPERZ_BRAND_5) == [("switch-to-generic", "1308432")]


def test_a_documented_reason_for_the_brand_is_not_overridden(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A", product=BRAND_10, exception=True))
    generic = find(ev.criteria, "I.A.7")
    assert generic.status is UNKNOWN and generic.fixes  # the option stays visible on the criterion
    assert generic.evidence == ("MedicationRequest/order-1", "AllergyIntolerance/generic")
    assert ev.fixes() == ()  # but nothing is pushed as a one-click change


# ----------------------------------------------------------------------------- evidence and wording


def test_evidence_names_the_resources_that_decided(policy: Policy) -> None:
    ev = evaluate(policy, facts_for("I.A"))
    assert find(ev.criteria, "I.A.1").evidence == ("MedicationRequest/order-1",)
    assert find(ev.criteria, "I.A.2").evidence == ("Condition/breast-cancer", "Condition/secondary-malignancy")
    assert find(ev.criteria, "I.A.3").evidence == ("PractitionerRole/oncology",)
    assert find(ev.criteria, "I.A.4").evidence == ("Patient/p1",)
    assert find(ev.criteria, "I.A.5").evidence == ("Observation/er-positive", "Observation/her2-negative")
    assert find(ev.criteria, "I.A.6").evidence == (
        "MedicationStatement/endocrine-therapy",
        "MedicationStatement/letrozole",
    )
    assert find(ev.criteria, "I.A.8").evidence == ("MedicationRequest/exemestane",)
    assert find(ev.criteria, "I.A.9").evidence == ("MedicationRequest/order-1",)
    not_met = evaluate(policy, facts_for("I.A", receptors=("er-positive", "her2-positive")))
    assert find(not_met.criteria, "I.A.5").evidence == ("Observation/her2-positive",)


def test_every_criterion_has_wording_and_a_remedy(policy: Policy) -> None:
    for pathway in policy.pathways:
        for criterion in pathway.all_criteria():
            assert criterion.text.strip() and criterion.remedy.strip(), criterion.id
    assert policy.pathway("I.A").criteria[0].text == "Request is for Afinitor or Afinitor Disperz;"


def test_policy_header(policy: Policy) -> None:
    assert (policy.id, policy.version) == ("CP.PHAR.63", "02.25")
    assert [p.id for p in policy.pathways] == [
        "I.A",
        "I.B",
        "I.C",
        "I.D",
        "I.E",
        "I.F",
        "I.G",
        "I.H",
        "I.I",
        "II.A",
        "II.B",
        "III",
    ]
    assert set(policy.lines_of_business) == {MEDICAID, HIM, COMMERCIAL}


def test_the_packaged_policy_loads_against_the_code_tables() -> None:
    codes = pytest.importorskip("fhir_mappings.codes")
    tables = codes.load_code_tables()
    assert load_policy(vocabulary=tables).id == "CP.PHAR.63"
