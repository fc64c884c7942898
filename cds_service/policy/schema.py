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


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a policy file (docs/policy-pack.schema.json)."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "priorauth-cds policy file"
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
        return f"{source}:{line or '?'}: {where}: {error['msg']}{more}"
    return None


if __name__ == "__main__":  # python -m cds_service.policy.schema  -> rewrites docs/policy-pack.schema.json
    import json
    import sys
    from pathlib import Path

    target = Path(__file__).resolve().parents[2] / "docs" / "policy-pack.schema.json"
    target.write_text(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
