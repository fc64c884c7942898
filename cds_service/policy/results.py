"""What the policy engine returns: an evaluation tree per order, consumed by the card builder.

This module is the contract between ``cds_service.policy.engine`` and ``cds_service.cards``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from fhir_mappings.model import frozen_instance


class Status(str, Enum):
    """Kleene three-valued truth of a criterion, and ``not-applicable`` for a criterion that applies to other
    products only (``applies_to``): neutral in every combination, never asked."""

    MET = "met"
    NOT_MET = "not-met"
    UNKNOWN = "unknown"
    NOT_APPLICABLE = "not-applicable"


class Decision(str, Enum):
    MET = "met"  # every criterion met
    NOT_MET = "not-met"  # some criterion not met
    INCOMPLETE = "incomplete"  # none not met, some undocumented
    REFER = "refer"  # the policy sends the request to another policy (referTo)


@dataclass(frozen=True)
class Fix:
    """A one-click remedy the card builder turns into a suggestion.

    kind "switch-to-generic": replace the draft with ``rxcui`` (the generic of the same strength and form).
    kind "add-companion": create a companion MedicationRequest for ``rxcui`` / ``display`` with ``sig``.
    kind "change-strength": the same daily mg in fewer tablets: ``frequency_per_day`` tablets of ``dose_mg``
    (``rxcui`` / ``display``, the generic of that strength).
    kind "switch-product": the pack's preferred alternative (``preferred_alternative``): replace the draft with
    ``rxcui`` / ``display`` (of ``family``) at the mapped daily dose ``dose_mg`` (``sig``), with the ``companion``
    order the alternative is given with and the companions it replaces (``stops``: their resources).
    """

    kind: str
    rxcui: str | None = None
    display: str | None = None
    sig: str | None = None  # e.g. "25 mg by mouth once daily"
    dose_mg: float | None = None
    frequency_per_day: int | None = None
    #: Ingredient tags of the drug it orders (an allergy to any withholds it); the drug itself for a switch.
    tags: tuple[str, ...] = field(default=(), compare=False)
    #: Diagnosis tags of a procedure the drug is given before (an induction agent before the transplant): once
    #: that procedure was performed, the order is not suggested; the card asks for the induction's documentation.
    given_before: tuple[str, ...] = field(default=(), compare=False)
    #: switch-product: the alternative's family, the companion it comes with, the companions it replaces.
    family: str | None = None
    companion: Fix | None = None
    stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class CriterionResult:
    """One numbered criterion (id as in the policy text, e.g. "I.A.9.a.i") and how it evaluated."""

    id: str
    text: str
    status: Status
    evidence: tuple[str, ...] = ()
    #: What would satisfy it, in words a prescriber can act on (from the policy file).
    remedy: str | None = None
    fixes: tuple[Fix, ...] = ()
    children: tuple[CriterionResult, ...] = ()
    #: Words beside the status ("30 mg/day exceeds 20 mg/day"; "exception documented; the payer reviews it").
    note: str | None = None
    #: False for a branch whose diagnosis is not on record (I.H.2.c for a meningioma): shown collapsed.
    applicable: bool = True
    #: What is missing, in a few words ("prior ripretinib (Qinlock)").
    gaps: tuple[str, ...] = ()
    #: "payer" when the payer, not the chart, settles it.
    review: str | None = None
    #: The note quotes the chart text that met it (a qualifier read from a note): shown beside a met criterion too.
    quoted: bool = False

    def walk(self) -> Iterator[CriterionResult]:
        """This criterion then its sub-items, depth first, in policy order."""
        yield self
        for child in self.children:
            yield from child.walk()


def criterion_result(
    id: str,
    text: str,
    status: Status,
    evidence: tuple[str, ...],
    remedy: str | None,
    fixes: tuple[Fix, ...],
    children: tuple[CriterionResult, ...],
    note: str | None,
    applicable: bool,
    gaps: tuple[str, ...],
    review: str | None,
    quoted: bool,
) -> CriterionResult:
    """``CriterionResult(...)`` with every field given, built as ``frozen_instance`` builds instead of through the
    frozen dataclass's twelve ``object.__setattr__`` calls: the engine builds one per criterion of the winning
    pathway (1.8 -> 0.5 µs each). The same object field for field (``tests/test_evaluate_shortcuts.py``)."""
    return frozen_instance(
        CriterionResult,
        id=id,
        text=text,
        status=status,
        evidence=evidence,
        remedy=remedy,
        fixes=fixes,
        children=children,
        note=note,
        applicable=applicable,
        gaps=gaps,
        review=review,
        quoted=quoted,
    )


@dataclass(frozen=True)
class OrderEvaluation:
    """The policy's answer for one draft order."""

    order_ref: str
    policy: str  # "CP.PHAR.63"
    policy_version: str  # e.g. "02.25" (last review date of the text it encodes)
    pathway: str | None  # "I.A" ... "I.I", "II.A"; None when no diagnosis is documented at all
    pathway_title: str
    decision: Decision
    refer_to: str | None = None
    line_of_business: str | None = None
    approval_months: int | None = None
    criteria: tuple[CriterionResult, ...] = ()
    #: Evaluation date used (ISO), for the audit and the coverage-information date.
    evaluation_date: str | None = None
    #: Notes for the reader that change no status (e.g. a generic of a product non-formulary for the plan).
    notes: tuple[str, ...] = ()
    #: (pathway id, title) the prescriber may document instead: the TSC manifestations when only TSC is on
    #: record, or every indication when no diagnosis is documented.
    diagnosis_options: tuple[tuple[str, str, str], ...] = ()  # (id, title, short title)
    #: Why the order is referred when the reason is not its criteria (a product non-formulary for the plan).
    referral_reason: str | None = None
    #: The drug as cards name it (policy file ``drug.name``), and the product when it is non-formulary.
    drug: str = "the drug"
    product_words: str | None = None
    #: Suggestions not offered and why (an allergy on record, an induction after the transplant, a fix that would
    #: not satisfy its criterion): shown on the card so the prescriber knows what to do instead.
    withheld: tuple[str, ...] = ()

    def all_criteria(self) -> Iterator[CriterionResult]:
        for criterion in self.criteria:
            yield from criterion.walk()

    def fixes(self) -> tuple[Fix, ...]:
        """Distinct fixes of not-met criteria, in policy order (an unknown criterion may have an exception)."""
        seen: list[Fix] = []
        pending = list(reversed(self.criteria))  # ``all_criteria``'s order without a generator per level
        while pending:
            criterion = pending.pop()
            if criterion.status is Status.NOT_MET:
                for fix in criterion.fixes:
                    if fix not in seen:
                        seen.append(fix)
            if criterion.children:
                pending += reversed(criterion.children)
        return tuple(seen)


@dataclass(frozen=True)
class UnreadableOrder:
    """A draft order of the policy's drug that could not be read (it is not valid FHIR even after the safe repairs):
    answered with a card saying so, never evaluated, so no coverage assertion is made for it."""

    order_ref: str
    #: Why, as the record reports it: "element: error type" of the first validation error (never a value).
    reason: str
    policy: str
    policy_version: str
    #: The drug as cards name it (policy file ``drug.name``).
    drug: str = "the drug"
