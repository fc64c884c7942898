"""The shape of a policy file, as pydantic models: the loader validates against them, and their JSON Schema is
published (docs/policy-pack.schema.json) so an editor or CI can check a pack before the service reads it.

Shape only: what the predicates mean, whether tags exist in the code tables and whether criterion ids follow
the policy's numbering are checked by ``loader`` afterwards, with the same file-and-line messages.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

LineOfBusinessName = Literal["commercial", "him", "medicaid"]
PathwayKind = Literal["indication", "initial-other", "continued", "continued-other", "not-authorized"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Header(_Strict):
    """Which policy this file encodes, and the review date of the text it encodes (quoted: YAML reads 02.25 as 2.25)."""

    id: str = Field(min_length=1, examples=["CP.PHAR.63"])
    version: str = Field(min_length=1, examples=["02.25"])
    title: str = Field(min_length=1)
    lines_of_business: list[LineOfBusinessName] = Field(min_length=1)
    document_url: str | None = Field(default=None, description="Link to the policy document shown on cards")
    pa_needed: Literal["auth-needed", "no-auth", "satisfied", "performpa", "conditional"] | None = Field(
        default=None, description="Da Vinci CRD pa-needed of every evaluated order (default auth-needed)"
    )


class Drug(_Strict):
    """The one drug a pack covers: which orders it evaluates, the word cards use, its product families."""

    tag: str = Field(min_length=1, description="Ingredient tag of the drug (tables/products.csv 'drug' column)")
    name: str = Field(min_length=1, description="The drug as cards name it, e.g. a generic name")
    families: dict[str, str] = Field(min_length=1, description="Product family (products.csv) -> its name")
    non_formulary_words: str | None = Field(default=None, description="How a non-formulary card names the product")
    max_gap_days: int | None = Field(
        default=None, ge=0, description="Longest break (days) between records of the drug that keeps one course"
    )


class Service(_Strict):
    """One CDS Hooks service of the pack, as discovery lists it."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$", examples=["everolimus-order-sign"])
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)


class Services(_Strict):
    """The pack's two services: one per hook (ids must be unique across every pack the service loads)."""

    order_sign: Service = Field(alias="order-sign")
    order_select: Service = Field(alias="order-select")


class ProvisionalTags(_Strict):
    """Tags the file may read although the code tables do not define them yet (always absent until they do)."""

    diagnoses: list[str] = Field(default_factory=list)
    ingredients: list[str] = Field(default_factory=list)
    specialties: list[str] = Field(default_factory=list)
    receptors: list[str] = Field(default_factory=list)


class ReferralTable(_Strict):
    text: str = Field(min_length=1)
    commercial: str | None = None
    him: str | None = None
    medicaid: str | None = None


class NonFormulary(_Strict):
    line_of_business: LineOfBusinessName
    family: str = Field(min_length=1)
    refer_to: str = Field(min_length=1)
    text: str = Field(min_length=1)
    generics: Literal["refer", "evaluate"] = "evaluate"
    generic_note: str | None = None


class LabelNote(_Strict):
    id: str = Field(min_length=1)
    when: Any = Field(description="A predicate (see docs/policy-format.md); the note shows when it is met")
    text: str = Field(min_length=1)


class UpTo(_Strict):
    up_to: int = Field(gt=0, description="This many months or the requested duration, whichever is less")


class ReferToPolicy(_Strict):
    refer_to: str = Field(min_length=1)


class ApprovalTable(_Strict):
    commercial: int | UpTo | ReferToPolicy | None = None
    him: int | UpTo | ReferToPolicy | None = None
    medicaid: int | UpTo | ReferToPolicy | None = None


class AppliesWhen(_Strict):
    diagnoses: list[str] | None = None
    suggested_by: list[str] | None = None
    also_requires: list[str] | None = None
    therapy_days_at_least: int | None = Field(default=None, gt=0)


class AppliesTo(_Strict):
    """The products a criterion is written for ("For Yonsa requests ..."); on others it is not-applicable."""

    families: list[str] | None = Field(default=None, description="Product families of drug.families")
    products: list[str] | None = Field(default=None, description="RxNorm codes of the pack's products.csv")


class Criterion(_Strict):
    """One numbered criterion: the policy's id and wording, what satisfies it, and its test."""

    id: str = Field(min_length=1, examples=["I.A.9.a.i"])
    text: str = Field(min_length=1)
    remedy: str = Field(min_length=1)
    predicate: Any = Field(description="A predicate name, or {name: parameters} (docs/policy-format.md)")
    criteria: list[Criterion] | None = None
    applies_to: AppliesTo | None = None


class Pathway(_Strict):
    id: str = Field(min_length=1, examples=["I.A"])
    title: str | None = None
    short_title: str | None = None
    kind: PathwayKind
    applies_when: AppliesWhen | None = None
    approval_months: ApprovalTable | None = None
    refer_to: str | None = None
    criteria: list[Criterion] = Field(min_length=1)


class PolicyFile(_Strict):
    """A drug policy as data: header, referral tables, formulary rules, label notes and pathways."""

    policy: Header
    drug: Drug
    services: Services | None = Field(default=None, description="The pack's CDS Hooks services (required to serve it)")
    provisional_tags: ProvisionalTags | None = None
    referrals: dict[str, ReferralTable]
    non_formulary: list[NonFormulary] | None = None
    label_notes: list[LabelNote] | None = None
    regimen_markers: dict[str, list[str]] | None = Field(
        default=None,
        description="Safe suggestions: diagnosis tag -> ingredient tags whose order shows that regimen (organ)",
    )
    duplicate_therapy_groups: list[str] | None = Field(
        default=None,
        description="Safe suggestions: medication groups never given two at a time (a member of one already ordered)",
    )
    pathways: list[Pathway] = Field(min_length=1)


# ----------------------------------------------------------------------------- the predicate vocabulary

_TAGS: dict[str, Any] = {
    "anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
}
_NUMBER: dict[str, Any] = {"type": "number", "minimum": 0}
_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}
_ABSENT: dict[str, Any] = {"enum": ["unknown", "not-met"], "description": "What no record means (default unknown)"}
_COMPANION: dict[str, Any] = {
    "type": "object",
    "description": "The one-click companion order (add-companion fix); rxcui must be in a code table",
    "properties": {
        "rxcui": _TEXT,
        "display": _TEXT,
        "sig": _TEXT,
        "dose_mg": _NUMBER,
        "frequency_per_day": {"type": "integer", "minimum": 1},
        "given_before": _TAGS,
    },
    "required": ["rxcui", "display", "sig", "frequency_per_day"],
    "additionalProperties": False,
}
_BOUNDS = ("above", "at_least", "below", "at_most")
_BOUND: dict[str, Any] = {
    "type": "object",
    "description": "Exactly one of above / at_least / below / at_most, in unit (a units.csv unit, e.g. ng/mL)",
    "properties": {**{b: {"type": "number"} for b in _BOUNDS}, "unit": _TEXT},
    "required": ["unit"],
    "minProperties": 2,
    "maxProperties": 2,
    "additionalProperties": False,
}
_GROUP: dict[str, Any] = {
    "anyOf": [
        _TAGS,
        {
            "type": "object",
            "properties": {"tags": _TAGS, "companion": _COMPANION},
            "required": ["tags"],
            "additionalProperties": False,
        },
    ]
}

#: Every leaf predicate: (what it tests, its parameters, the required ones). docs/policy-format.md says more; a test
#: checks that this covers exactly ``predicates.LEAVES``.
#: ``history_of_*``: the tags, and what the policy's words require of the therapy (asked by the DTR questionnaire).
_HISTORY: dict[str, Any] = {
    "tags": _TAGS,
    "outcome": {"enum": ["received", "failure"]},
    "unless": {
        "anyOf": [
            {"enum": ["contraindicated", "not-tolerated"]},
            {"type": "array", "items": {"enum": ["contraindicated", "not-tolerated"]}, "minItems": 1},
        ]
    },
}


PREDICATES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "product_in": ("The ordered product's family is listed", {"families": _TAGS}, ("families",)),
    "diagnosis_in": (
        "A listed diagnosis tag is on record",
        {"tags": _TAGS, "absent": _ABSENT, "ruled_out_by": _TAGS},
        ("tags",),
    ),
    "indication_of": (
        "The member has a diagnosis that makes one of these pathways apply",
        {"pathways": _TAGS},
        ("pathways",),
    ),
    "disease_extent": ("An extent tag (metastatic, secondary malignancy ...) is a diagnosis", {"tags": _TAGS}, ()),
    "receptor_status": (
        "Receptor results as required",
        {"hormone_receptor": {"enum": ["positive", "negative"]}, "her2": {"enum": ["positive", "negative"]}},
        (),
    ),
    "prescriber_specialty_in": ("The requester has a listed specialty", {"specialties": _TAGS}, ("specialties",)),
    "age_at_least": ("Age on the order date is at least years", {"years": _NUMBER}, ("years",)),
    "generic_if_available": ("A generic is ordered, or the brand has no marketed generic", {}, ()),
    "combined_with_any": (
        "A listed drug is co-ordered or active",
        {"tags": _TAGS, "companion": _COMPANION},
        ("tags",),
    ),
    "combined_with_all": (
        "Every group is co-ordered or active",
        {"groups": {"type": "array", "items": _GROUP, "minItems": 1}},
        ("groups",),
    ),
    "combined_with_none": ("No listed drug is co-ordered or active", {"tags": _TAGS}, ("tags",)),
    "history_of_any": ("A listed drug was started before the order date", _HISTORY, ("tags",)),
    "history_of_all": ("Every listed drug was started before the order date", _HISTORY, ("tags",)),
    "continued_therapy_days": ("The current course covers at least days", {"days": _NUMBER}, ("days",)),
    "responding_to_therapy": ("The latest response assessment since the course began is favourable", {}, ()),
    "dose_within": (
        (
            "The member's daily amount is within the limit: exactly one of max_mg_per_day, max_units_per_day "
            "(tablets, capsules or mL of the family's dose form) or max_tablets_per_day (its older name); a unit "
            "limit needs a family, an mg limit may name one"
        ),
        {"max_mg_per_day": _NUMBER, "max_units_per_day": _NUMBER, "max_tablets_per_day": _NUMBER, "family": _TEXT},
        (),
    ),
    "preferred_alternative": (
        (
            "For the from family's orders, use the alternative: not-met with a one-click switch at the mapped daily "
            "dose and the companion change; met on other families"
        ),
        {
            "from": {
                "type": "object",
                "properties": {"family": _TEXT},
                "required": ["family"],
                "additionalProperties": False,
            },
            "to": {
                "type": "object",
                "description": "The alternative product (products.csv rxcui of another family)",
                "properties": {
                    "rxcui": _TEXT,
                    "dose_mapping": {
                        "type": "object",
                        "properties": {"factor": {"type": "number", "exclusiveMinimum": 0}},
                        "required": ["factor"],
                        "additionalProperties": False,
                    },
                    "companion_change": {
                        "type": "object",
                        "properties": {"remove": _TAGS, "add": _COMPANION},
                        "additionalProperties": False,
                    },
                },
                "required": ["rxcui", "dose_mapping"],
                "additionalProperties": False,
            },
        },
        ("from", "to"),
    ),
    "dose_increase": ("The new daily dose is above the previous one", {}, ()),
    "not_dose_increase": ("The new daily dose is at most the previous one", {}, ()),
    "documented": ("Only chart notes can show it: always unknown", {"what": _TEXT}, ("what",)),
    "qualifier_documented": (
        "A qualifier phrase (qualifier_phrases.csv) in a Condition's note or code text",
        {"qualifier": _TEXT, "what": _TEXT, "about": _TAGS},
        ("qualifier", "what"),
    ),
    "payer_review": ("Only the payer can settle it: unknown, flagged for payer review", {"what": _TEXT}, ("what",)),
    "diagnosis_within_days": (
        "A listed diagnosis started fewer than days before the order",
        {"tags": _TAGS, "days": _NUMBER},
        ("tags", "days"),
    ),
    "procedure_in": (
        "A Procedure showing a listed tag was received (or, with scheduled, is scheduled)",
        {"tags": _TAGS, "scheduled": {"type": "boolean"}, "absent": _ABSENT},
        ("tags",),
    ),
    "lab_value": (
        "The latest value of a lab test (lab_tests.csv) meets the bound, or at least N values each do",
        {
            "tests": _TAGS,
            "latest": _BOUND,
            "at_least": {"type": "integer", "minimum": 1},
            "each": _BOUND,
            "within_days": {"type": "integer", "minimum": 1},
        },
        ("tests",),
    ),
    "lab_trend": (
        "The latest `rising` values of a lab test each exceed the one before (and the optional bound)",
        {
            "tests": _TAGS,
            "rising": {"type": "integer", "minimum": 1},
            **{b: {"type": "number"} for b in _BOUNDS},
            "unit": _TEXT,
            "within_days": {"type": "integer", "minimum": 1},
        },
        ("tests", "rising", "unit"),
    ),
}
COMBINATOR_SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    "all_of": ("Kleene and", {"type": "array", "items": {"$ref": "#/$defs/Predicate"}, "minItems": 1}),
    "any_of": ("Kleene or", {"type": "array", "items": {"$ref": "#/$defs/Predicate"}, "minItems": 1}),
    "not": ("Kleene not", {"$ref": "#/$defs/Predicate"}),
    "conditional": (
        "if P then Q (met when P is not met)",
        {
            "type": "object",
            "properties": {"if": {"$ref": "#/$defs/Predicate"}, "then": {"$ref": "#/$defs/Predicate"}},
            "required": ["if", "then"],
            "additionalProperties": False,
        },
    ),
    "sub_items": ("How the criterion's sub-items combine", {"enum": ["any", "all"]}),
}


def predicate_schema() -> dict[str, Any]:
    """JSON Schema of one predicate: a bare name (when it needs no parameters) or ``{name: parameters}``, so an
    editor flags a misspelt predicate or parameter while the pack is written."""
    forms: list[dict[str, Any]] = []
    bare = sorted(name for name, (_, _, required) in PREDICATES.items() if not required)
    forms.append({"enum": bare, "description": "A predicate without parameters"})
    entries = {
        name: (
            doc,
            {"type": ["object", "null"], "properties": props, "required": list(req), "additionalProperties": False},
        )
        for name, (doc, props, req) in PREDICATES.items()
    }
    entries.update(COMBINATOR_SCHEMAS)
    for name, (doc, params) in entries.items():
        forms.append(
            {
                "type": "object",
                "description": f"{name}: {doc}",
                "properties": {name: params},
                "required": [name],
                "additionalProperties": False,
            }
        )
    return {"description": "A predicate (docs/policy-format.md, 'Predicate vocabulary')", "anyOf": forms}


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a policy file (docs/policy-pack.schema.json), with every predicate spelt out."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "priorauth-cds policy file"
    defs = schema.setdefault("$defs", {})
    defs["Predicate"] = predicate_schema()
    defs["Criterion"]["properties"]["predicate"] = {"$ref": "#/$defs/Predicate"}
    defs["LabelNote"]["properties"]["when"] = {"$ref": "#/$defs/Predicate"}
    return schema


def line_of(text: str, location: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``location`` (keys and list indexes), or of its nearest parent."""
    try:
        node: Any = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((value for key, value in node.value if key.value == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _accepted_keys(location: tuple[int | str, ...]) -> list[str]:
    """The keys a mapping at ``location`` accepts, read from the published schema (for "unknown key" messages)."""
    schema = json_schema()
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        while isinstance(node, dict):
            if "$ref" in node:
                node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
            elif "anyOf" in node:  # X | None: the branch that is a mapping or a list
                node = next((b for b in node["anyOf"] if "$ref" in b or "properties" in b or "items" in b), {})
            else:
                return node
        return node

    node = resolve(schema)
    for part in location:
        node = resolve(node.get("items") if isinstance(part, int) else node.get("properties", {}).get(part))
        if not isinstance(node, dict):
            return []
    return sorted(node.get("properties", {}))


def check_shape(raw: Any, text: str, source: str) -> str | None:
    """None when ``raw`` has the shape of a policy file; else "file:line: what is wrong" for the first problem."""
    try:
        PolicyFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = tuple(part for part in error["loc"] if isinstance(part, (str, int)))
        # Drop union-branch names pydantic adds (e.g. "int", "UpTo") so the path walks the YAML.
        walkable = tuple(p for p in location if isinstance(p, int) or not p[:1].isupper() and p not in ("int", "str"))
        line = line_of(text, walkable)
        where = ".".join(str(p) for p in walkable) or "file"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        accepted = _accepted_keys(walkable[:-1]) if error["type"] == "extra_forbidden" else []
        hint = f" (accepted: {', '.join(accepted)})" if accepted else ""
        return f"{source}:{line or '?'}: {where}: {error['msg']}{hint}{more}"
    return None


if __name__ == "__main__":  # python -m cds_service.policy.schema  -> rewrites docs/policy-pack.schema.json
    import json
    import sys
    from pathlib import Path

    target = Path(__file__).resolve().parents[2] / "docs" / "policy-pack.schema.json"
    target.write_text(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
