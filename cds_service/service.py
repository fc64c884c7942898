"""One hook call from decoded request to response body: pure orchestration, no Flask.

``HookHandler.handle`` is what the HTTP route, the CLI (``priorauth-cds evaluate FILE``) and the tests
call. It finds the orders of the policy's drug in scope (nothing else is fetched when there is none), gathers
prefetch with FHIR fallback, builds the typed record and the facts, evaluates the policy, renders
cards and records each coverage assertion. An order of the drug that is not valid FHIR (the record dropped it) is
not evaluated: it gets a card saying it could not be read, while the other orders are answered as usual.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Protocol

import orjson
import requests

from fhir_mappings.answers import read_answers, with_answers
from fhir_mappings.codes import CodeTables
from fhir_mappings.facts import build_facts, find_drug_orders
from fhir_mappings.record import build_record

from . import cards as card_builder
from . import metrics
from .config import Config
from .discovery import ANSWER_KEYS, PREFETCH_TEMPLATES, REQUIRED_PREFETCH_KEYS, SERVICES
from .dtr import offer
from .egress import fhir_access_for
from .errors import PrefetchUnavailable, ProtocolError, UnknownService
from .logs import log_event
from .policy.engine import Policy, evaluate, unreadable
from .policy.loader import DEFAULT_PACK, POLICY_FILE
from .policy.questions import remembered_outcomes
from .policy.results import UnreadableOrder
from .prefetch import gather
from .protocol import FHIR_ID, HookRequest, parse_hook_request, response_json

log = logging.getLogger("priorauth_cds.service")


#: The answer when no order of the policy's drug is in scope (``to_json(HookResponse())``).
_NO_CARDS = response_json([], [])


class AssertionSink(Protocol):
    """Where coverage assertions go (the audit store); tests may pass a list-backed fake."""

    def record_assertions(self, assertions: list[Any]) -> Any: ...


@dataclass
class Timings:
    """Milliseconds per stage, logged with the hookInstance (never PHI)."""

    stages: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.stages[name] = round((now - started) * 1000, 2)
        return now


@dataclass
class HookOutcome:
    #: The response body as sent (``protocol.response_json``): written once, decoded only when asked for (``body``).
    json: bytes
    hook_instance: str
    evaluated: int
    decisions: list[str]
    timings: Timings
    #: Orders of the drug in scope that could not be read (not valid FHIR), answered without an evaluation.
    unreadable: int = 0

    @functools.cached_property
    def body(self) -> dict[str, Any]:
        """The response body as a JSON object (the CLI, tests); the web layer sends ``json``."""
        body: dict[str, Any] = orjson.loads(self.json)
        return body


def _capped(
    resources: dict[str, list[dict[str, Any]]], failed: dict[str, str], limit: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Drop keys holding more resources than the service reads; they count as unobtainable."""
    over = {key for key, entries in resources.items() if len(entries) > limit}
    if not over:
        return resources, failed
    kept = {key: ([] if key in over else entries) for key, entries in resources.items()}
    return kept, {**failed, **{key: "too-many-resources" for key in over}}


def _unavailable_keys(
    resources: dict[str, list[dict[str, Any]]], failed: dict[str, str], ignored: tuple[str, ...]
) -> frozenset[str]:
    """Keys that failed, or whose every entry was about another patient (a FHIR server that lies)."""
    if not ignored:  # nothing was about another patient (every call but a lying server's)
        return frozenset(failed)
    other_patient = {entry.split(":", 1)[0] for entry in ignored}
    lied = {
        key
        for key, entries in resources.items()
        if entries and all(f"{r.get('resourceType')}/{r.get('id')}" in other_patient for r in entries)
    }
    return frozenset(failed) | frozenset(lied)


def _in_scope(request: HookRequest, order_ids: list[str]) -> list[str]:
    """order-sign: every everolimus draft; order-select: only the selected ones."""
    if request.hook != "order-select":
        return order_ids
    selected = {s.split("/")[-1] for s in request.context.selections or [] if isinstance(s, str)}
    return [order_id for order_id in order_ids if order_id in selected]


class HookHandler:
    """Holds what is loaded once per worker (config, code tables, compiled policy, store, HTTP session)."""

    def __init__(
        self,
        config: Config,
        tables: CodeTables,
        policy: Policy,
        store: AssertionSink | None = None,
        session_factory: Callable[[], requests.Session] = requests.Session,
        today: Callable[[], date] | None = None,
    ) -> None:
        self.config = config
        self.tables = tables
        self.policy = policy
        #: service id -> hook of the services this handler answers: its policy pack's (the packaged ones for a
        #: policy without a ``services`` block).
        self.hooks: dict[str, str] = {s.id: s.hook for s in policy.services} or {
            service_id: service["hook"] for service_id, service in SERVICES.items()
        }
        #: The card link: the pack's own document_url; ``CDS_POLICY_URL`` overrides it for the packaged default pack
        #: only (it names one document, and a zentorimab card must never link the everolimus policy).
        packaged_default = policy.source == f"cds_service/policies/{DEFAULT_PACK}/{POLICY_FILE}"
        self.policy_url = (config.policy_url if packaged_default else None) or policy.document_url
        self.store = store
        self.session_factory = session_factory
        self.today = today or (lambda: datetime.now(UTC).date())

    def handle(
        self,
        service_id: str,
        payload: Any,
        *,
        issuer: str | None = None,
        base_url: str | None = None,
        log_fields: dict[str, Any] | None = None,
    ) -> HookOutcome:
        """Answer one hook call; raises ServiceError subclasses for the web layer to map.

        ``issuer`` is the ``iss`` of the caller's verified JWT: with JWT issuers configured, the FHIR fallback
        only calls that issuer's ``fhirServers`` (none without a verified issuer); without issuers, loopback
        servers and ``CDS_FHIR_SERVERS``. ``base_url`` is where DTR clients reach this service (the
        questionnaire canonicals): ``CDS_PUBLIC_BASE_URL``, else the URL the request came in on. ``log_fields``:
        the fields of the caller's one log line for the request, where a routine prefetch summary goes.
        """
        expected = self.hooks.get(service_id)
        if expected is None:
            raise UnknownService(f"no CDS service '{service_id[:64]}'")
        timings = Timings()
        started = time.perf_counter()
        request = parse_hook_request(payload, expected)
        drafts = request.context.draftOrders.resources()
        in_scope = _in_scope(request, find_drug_orders(drafts, self.tables))
        for order_id in in_scope:
            if not FHIR_ID.fullmatch(order_id):
                raise ProtocolError(
                    "a draft MedicationRequest of the policy's drug has an invalid FHIR id",
                    expression=["context.draftOrders"],
                )
        started = timings.mark("parse", started)
        if not in_scope:
            return HookOutcome(_NO_CARDS, request.hookInstance, 0, [], timings)

        context = request.context.as_dict()
        outcome = gather(
            templates=PREFETCH_TEMPLATES,
            context=context,
            prefetch=request.prefetch,
            fhir_server=request.fhirServer,
            access_token=request.access_token,
            config=self.config,
            session_factory=self.session_factory,
            fhir_access=fhir_access_for(self.config, issuer),
            log_fields=log_fields,
            routine_failures=ANSWER_KEYS,
        )
        if self.config.metrics:
            metrics.record_prefetch(outcome.origin, outcome.failed)
        started = timings.mark("prefetch", started)
        missing = outcome.missing_required(REQUIRED_PREFETCH_KEYS)
        obtained = [k for k, origin in outcome.origin.items() if origin in ("prefetch", "fetched")]
        if missing or not obtained:
            # One generic reason for the client: per-key causes (refused, timeout, bad body ...) would let a caller
            # probe hosts and ports through fhirServer. The reason codes (no URL, no port) go to the log.
            reasons = ", ".join(
                f"{k}={outcome.failed.get(k, 'unavailable')}" for k in (missing or sorted(outcome.failed))
            )
            log_event(log, "prefetch.unavailable", logging.WARNING, reasons=reasons)
            raise PrefetchUnavailable("required data could not be obtained from prefetch or fhirServer")

        resources, failed = _capped(outcome.resources, outcome.failed, self.config.max_resources_per_key)
        record = build_record(
            resources, drafts, self.tables, patient_id=request.context.patientId, user_ref=request.context.userId
        )
        started = timings.mark("record", started)
        unavailable = _unavailable_keys(resources, failed, record.ignored) - ANSWER_KEYS
        today = self.today()
        base = (self.config.public_base_url or base_url or "http://localhost").rstrip("/")
        responses = [r for key in ANSWER_KEYS for r in resources.get(key, ())]
        answered: list[card_builder.EvaluatedOrder | UnreadableOrder] = []
        for order_id in in_scope:
            order_ref = f"MedicationRequest/{order_id}"
            if record.draft(order_id) is None:
                reason = record.dropped_reason(order_ref) or "not a readable MedicationRequest"
                answered.append(unreadable(self.policy, order_ref, reason))
                continue
            facts = build_facts(
                record,
                order_id,
                self.tables,
                plan_prefixes=self.config.plan_prefixes,
                user_ref=request.context.userId,
                today=today,
                **_course_settings(self.policy),
            )
            if unavailable:
                facts = replace(facts, unavailable=unavailable)
            heard = read_answers(
                responses,
                self.tables,
                patient_id=request.context.patientId,
                order_ref=facts.order_ref,
                questionnaires=offer.answerable(self.policy, base),
            )
            if heard.not_used:
                # Why, not which: response ids stay out of the log like every other resource reference.
                whys = sorted({n.why for n in heard.not_used})
                log_event(log, "dtr.responses_ignored", count=len(heard.not_used), reasons="; ".join(whys)[:500])
            with remembered_outcomes():  # the prefill reads the chart outcomes the evaluation computed
                evaluation = evaluate(
                    self.policy, with_answers(facts, heard, offer.suggested_diagnoses(self.policy, facts))
                )
                dtr = offer.offer(
                    self.policy, self.tables, evaluation, facts, record, heard, base=base, hook=request.hook
                )
            draft = next(d for d in drafts if d.get("resourceType") == "MedicationRequest" and d.get("id") == order_id)
            answered.append(
                card_builder.EvaluatedOrder(
                    evaluation=dtr.evaluation,
                    draft=draft,
                    coverage_ref=facts.coverage_ref,
                    patient_ref=f"Patient/{request.context.patientId}",
                    unavailable={key: failed.get(key, "another patient's data") for key in unavailable},
                    questionnaires=dtr.questionnaires,
                    documentable=dtr.documentable,
                    dtr_prefill=dtr.prefill,
                    answers_used=dtr.answers_used,
                    answers_not_used=dtr.answers_not_used,
                )
            )
        items = [answer for answer in answered if isinstance(answer, card_builder.EvaluatedOrder)]
        started = timings.mark("evaluate", started)
        rendered = self._render(answered, request, today, {}, base)
        if self.store is not None:
            stored_ids = self._record(request, service_id, items, rendered, issuer)
            if any(stored_ids.get(d.order_ref, d.assertion_id) != d.assertion_id for d in rendered.assertions):
                # A retry (same hookInstance, caller, patient, order and decision: ``CoverageAssertion.retry_key``),
                # or a concurrent one, stored its assertion first: answer with that id, as every retry will.
                rendered = self._render(answered, request, today, stored_ids, base)
                self.store.record_response(  # type: ignore[attr-defined]  # the new cards' uuids
                    service_id=service_id,
                    hook_instance=request.hookInstance,
                    card_uuids=[card["uuid"] for card in rendered.cards],
                    assertions=[],
                )
        timings.mark("render", started)
        return HookOutcome(
            response_json(rendered.cards, rendered.system_actions),
            request.hookInstance,
            len(items),
            [i.evaluation.decision.value for i in items],
            timings,
            unreadable=len(answered) - len(items),
        )

    def _render(
        self,
        answers: list[card_builder.EvaluatedOrder | UnreadableOrder],
        request: HookRequest,
        today: date,
        ids: dict[str, str],
        base: str,
    ) -> card_builder.Rendered:
        return card_builder.render(
            answers,
            hook=request.hook,
            insurer=self.config.insurer_name,
            crd_configuration=request.crd_configuration(),
            today=today,
            policy_url=self.policy_url,
            assertion_ids=ids,
            dtr_launch_url=self.config.dtr_launch_url,
            payer_fhir_base=f"{base}/fhir",
            pa_needed=self.policy.pa_needed,
        )

    def _record(
        self,
        request: HookRequest,
        service_id: str,
        items: list[card_builder.EvaluatedOrder],
        rendered: card_builder.Rendered,
        issuer: str | None = None,
    ) -> dict[str, str]:
        """Store the issued card uuids and the coverage assertions; order_ref -> stored assertion id."""
        assert self.store is not None
        rows = self._audit_rows(request, service_id, items, rendered, issuer) if rendered.assertions else []
        record_response = getattr(self.store, "record_response", None)
        if record_response is None:  # a plain AssertionSink (tests): assertions only
            if rows:
                self.store.record_assertions(rows)
            return {}
        return dict(
            record_response(
                service_id=service_id,
                hook_instance=request.hookInstance,
                card_uuids=[card["uuid"] for card in rendered.cards],
                assertions=rows,
            )
        )

    def _audit_rows(
        self,
        request: HookRequest,
        service_id: str,
        items: list[card_builder.EvaluatedOrder],
        rendered: card_builder.Rendered,
        issuer: str | None = None,
    ) -> list[Any]:
        from .store import CoverageAssertion, order_digest

        rows = []
        now = datetime.now(UTC)
        by_order = {item.evaluation.order_ref: item for item in items}
        for decision in rendered.assertions:
            item = by_order[decision.order_ref]
            ev = item.evaluation
            rows.append(
                CoverageAssertion(
                    assertion_id=decision.assertion_id,
                    created_at=now,
                    hook_instance=request.hookInstance,
                    service_id=service_id,
                    order_ref=ev.order_ref,
                    patient_ref=item.patient_ref,
                    coverage_ref=item.coverage_ref,
                    policy=ev.policy,
                    policy_version=ev.policy_version,
                    pathway=ev.pathway,
                    decision=ev.decision.value,
                    criteria=[{"id": c.id, "status": card_builder.STATUS_WORD[c.status]} for c in ev.all_criteria()],
                    covered=decision.covered,
                    pa_needed=decision.pa_needed,
                    doc_needed=decision.doc_needed,
                    dtr_prefill=item.dtr_prefill if decision.doc_needed and item.questionnaires else None,
                    dtr_answers_used=item.answers_used or None,
                    issuer=issuer,
                    order_digest=order_digest(item.draft),
                )
            )
        return rows


def _course_settings(policy: Policy) -> dict[str, float]:
    """The pack's course settings for ``build_facts`` (``drug.max_gap_days``), when the pack states them."""
    gap = policy.drug.max_gap_days
    return {} if gap is None else {"max_gap_days": float(gap)}
