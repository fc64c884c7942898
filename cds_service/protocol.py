"""CDS Hooks 2.0 request and response models (pydantic), with a tolerant reader and a strict writer.

Reader: unknown members and ``extension`` content are ignored, a draftOrders Bundle without ``type``
and sandbox requests without ``fhirAuthorization`` are accepted; structure the service cannot use
is a ``ProtocolError`` naming the offending member. Writer: ``to_json`` never emits null or empty
members (the CDS Hooks JSON rule), except the top-level ``"cards": []``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticUndefined

from .errors import MalformedBody, ProtocolError

ORDER_HOOKS = ("order-sign", "order-select")
MAX_SUMMARY_CHARS = 139  # "SHALL be less than 140 characters"


# ----------------------------------------------------------------------------- request


#: No control characters (they cannot be logged or stored safely, and no real id has them).
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
#: Deepest nesting of objects and arrays read in a request. Real FHIR resources stay under 20 levels; deeper
#: input is refused (400) before it reaches code that recurses over it or echoes it (serialisers stop at 255).
MAX_NESTING = 100
#: Draft orders (and selections) one hook call may carry. An order-sign with an order set stays well below it; 500
#: drafts took 5.8 s to answer (4.8 MB), so more is a 400 naming the limit, before any work.
MAX_DRAFT_ORDERS = 50

#: FHIR R4 id datatype.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FhirAuthorization(_Tolerant):
    """OAuth 2.0 access the CDS client grants for FHIR calls; only the token is used, never logged."""

    access_token: str = Field(min_length=1, max_length=16384)
    token_type: str | None = None
    expires_in: int | float | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None


class DraftOrdersBundle(_Tolerant):
    """The draftOrders Bundle; entries are kept as raw dicts so echoed orders stay byte-for-byte faithful."""

    resourceType: Literal["Bundle"]
    type: str | None = None
    entry: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_DRAFT_ORDERS)

    @field_validator("entry", mode="before")
    @classmethod
    def _entries_are_objects(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("entry must be an array")  # noqa: TRY004 - pydantic validators report ValueError
        for item in value:
            if not isinstance(item, dict):
                raise ValueError("each entry must be an object")  # noqa: TRY004 - pydantic validators report ValueError
            resource = item.get("resource")
            if resource is not None and not (
                isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)
            ):
                raise ValueError("entry.resource must be a FHIR resource")
        return value

    def resources(self) -> list[dict[str, Any]]:
        """The entry resources, skipping entries without one."""
        return [e["resource"] for e in self.entry if isinstance(e.get("resource"), dict)]


class OrderContext(_Tolerant):
    """Context shared by order-sign and order-select (CDS Hooks library, R4)."""

    userId: str = Field(min_length=1, max_length=256, pattern=PRINTABLE)
    patientId: str = Field(min_length=1, max_length=256, pattern=PRINTABLE)
    encounterId: str | None = Field(default=None, max_length=256, pattern=PRINTABLE)
    draftOrders: DraftOrdersBundle
    selections: list[str] | None = Field(default=None, max_length=MAX_DRAFT_ORDERS)

    def as_dict(self) -> dict[str, Any]:
        """Root-level context fields usable as prefetch tokens."""
        out: dict[str, Any] = {"userId": self.userId, "patientId": self.patientId}
        if self.encounterId:
            out["encounterId"] = self.encounterId
        return out


class HookRequest(_Tolerant):
    """A CDS Hooks 2.0 service request for an order hook."""

    hook: str = Field(min_length=1, max_length=128, pattern=PRINTABLE)
    hookInstance: str = Field(min_length=1, max_length=256, pattern=PRINTABLE)
    fhirServer: str | None = Field(default=None, max_length=2048)
    fhirAuthorization: FhirAuthorization | None = None
    context: OrderContext
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @property
    def access_token(self) -> str | None:
        return self.fhirAuthorization.access_token if self.fhirAuthorization else None

    def crd_configuration(self) -> dict[str, Any]:
        """The ``davinci-crd.configuration`` request extension, or {} when absent or malformed."""
        config = (self.extension or {}).get("davinci-crd.configuration")
        return config if isinstance(config, dict) else {}


def parse_json(body: bytes) -> Any:
    """Bytes -> JSON value; invalid UTF-8, bad syntax or excessive nesting is a 400, never a crash."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    except RecursionError:  # pragma: no cover - orjson caps depth itself
        raise MalformedBody("request body nests too deeply") from None


def _describe(error: ValidationError) -> tuple[str, list[str]]:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"missing required member '{path}'", [path]
    return f"invalid '{path}': {message}"[:300], [path] if path else []


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """How deeply objects and arrays nest in a JSON value (a scalar is 0), counting no further than ``limit + 1``.

    Iterative, so a deep value cannot exhaust the interpreter's stack while being measured; level by level, so it
    keeps one list per level instead of a (node, depth) tuple per container (1.5 % of the handler before), each
    level built by one comprehension (a generator per container cost half the walk).
    """
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, _CONTAINERS)
        ]
    return depth


_CONTAINERS = (dict, list)


def parse_hook_request(payload: Any, expected_hook: str) -> HookRequest:
    """Validate a decoded body as a request for ``expected_hook``; ProtocolError otherwise."""
    if not isinstance(payload, dict):
        raise ProtocolError("request body must be a JSON object")
    # What the answer echoes (the draft orders, in systemActions and suggestions) must serialise again, so the
    # request minus its prefetch is held to MAX_NESTING. Prefetch is read, never echoed, and walking a
    # 5,000-resource prefetch in Python cost more than the whole evaluation.
    if nesting_depth({key: value for key, value in payload.items() if key != "prefetch"}) > MAX_NESTING:
        raise ProtocolError(f"request body nests objects and arrays more than {MAX_NESTING} levels deep")
    hook = payload.get("hook")
    if isinstance(hook, str) and hook and hook != expected_hook:
        raise ProtocolError(f"this service answers '{expected_hook}', not '{hook[:64]}'", expression=["hook"])
    context = payload.get("context")
    if isinstance(context, dict) and "draftOrders" in context:
        drafts = context.get("draftOrders")
        if not isinstance(drafts, dict) or drafts.get("resourceType") != "Bundle":
            raise ProtocolError("context.draftOrders must be a FHIR Bundle", expression=["context.draftOrders"])
    try:
        request = HookRequest.model_validate(payload)
    except ValidationError as exc:
        message, expression = _describe(exc)
        raise ProtocolError(message, expression=expression) from None
    if expected_hook == "order-select" and request.context.selections is None:
        raise ProtocolError("order-select requires context.selections", expression=["context.selections"])
    return request


# ----------------------------------------------------------------------------- response


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def new_uuid() -> str:
    return str(uuid.uuid4())


class Coding(_Strict):
    code: str
    system: str | None = None
    display: str | None = None


class Source(_Strict):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Link(_Strict):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"
    appContext: str | None = None


class Action(_Strict):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: list[str] | None = None


class Suggestion(_Strict):
    label: str
    uuid: str = Field(default_factory=new_uuid)
    isRecommended: bool | None = None
    actions: list[Action] = Field(default_factory=list)


class Card(_Strict):
    summary: str = Field(min_length=1, max_length=MAX_SUMMARY_CHARS)
    indicator: Literal["info", "warning", "critical"]
    source: Source
    uuid: str = Field(default_factory=new_uuid)
    detail: str | None = None
    suggestions: list[Suggestion] = Field(default_factory=list)
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)
    extension: dict[str, Any] | None = None


class HookResponse(_Strict):
    cards: list[Card] = Field(default_factory=list)
    systemActions: list[Action] = Field(default_factory=list)


#: Per response model: each field's name and default (a factory, or the value), in declaration order.
_FIELD_DEFAULTS: dict[type[BaseModel], tuple[tuple[str, Any, Any], ...]] = {
    model: tuple(
        (name, info.default_factory, PydanticUndefined if info.is_required() else info.default)
        for name, info in model.model_fields.items()
    )
    for model in (Coding, Source, Link, Action, Suggestion, Card)
}
_FIELD_NAMES: dict[type[BaseModel], frozenset[str]] = {
    model: frozenset(name for name, _, _ in fields) for model, fields in _FIELD_DEFAULTS.items()
}
#: Containers whose empty value ``json_form`` leaves out, as it leaves out None: every such member is optional
#: (None or ``[]`` by default), so the form still validates into its model. An empty string stays (it may be
#: required): the writer leaves it out.
_EMPTIABLE = (list, dict, tuple)


def json_form(model: type[BaseModel], **values: Any) -> dict[str, Any]:
    """``model``'s JSON form, without building the model: members in field order, defaults filled in (a card's
    uuid), None and empty containers left out, so that for usual values it is already what the writer sends.

    The card builders write answers this way (building pydantic models and then walking them was a third of
    render and to_json); ``tests/test_response_json.py`` validates what they build into the models and compares
    the bytes with the models' path.
    """
    if not values.keys() <= _FIELD_NAMES[model]:
        raise TypeError(f"{model.__name__} has no member {sorted(values.keys() - _FIELD_NAMES[model])}")
    out: dict[str, Any] = {}
    for name, factory, default in _FIELD_DEFAULTS[model]:
        if name in values:
            value = values[name]
        elif factory is not None:
            value = factory()
        elif default is PydanticUndefined:
            raise TypeError(f"{model.__name__} needs {name}")
        else:
            value = default
        if value is None or (type(value) in _EMPTIABLE and not value):
            continue
        out[name] = value
    return out


def _prune(value: Any) -> Any:
    """Drop None and empty members recursively, in one pass (CDS Hooks: no null or empty JSON elements).

    Runs on ``model_dump(mode="json")`` output, where every object is a plain ``dict`` and every array a ``list``,
    hence the exact type tests: on every answer this walks the echoed draft orders, and was 2x slower with
    ``isinstance`` and a sentinel per member.
    """
    if type(value) is dict:
        kept: dict[str, Any] = {}
        for key, member in value.items():
            kind = type(member)
            if kind is dict or kind is list:
                member = _prune(member)
                if member:
                    kept[key] = member
            elif member is not None and member != "":
                kept[key] = member
        return kept
    if type(value) is list:
        items: list[Any] = []
        for member in value:
            kind = type(member)
            if kind is dict or kind is list:
                member = _prune(member)
                if member:
                    items.append(member)
            elif member is not None and member != "":
                items.append(member)
        return items
    return value


class _NotPlainJson(Exception):
    """A value ``model_dump(mode="json")`` would convert (a date, tuple, enum, non-str key, inf or NaN)."""


def _plain(value: Any) -> Any:
    """``_prune(model_dump(mode="json", exclude_none=True))`` of a response model in one walk, for plain JSON.

    Models are read field by field in declaration order (``model_dump``'s order; these models have no aliases or
    custom serialisers). Anything ``mode="json"`` would convert raises ``_NotPlainJson``, so the caller falls back
    to the two-step path and no answer can differ. Exact type tests and scalars inline: see ``_prune``.
    """
    kind = type(value)
    if kind is list:
        items: list[Any] = []
        for member in value:
            kind = type(member)
            if kind is str:
                if member:
                    items.append(member)
            elif kind is int or kind is bool:
                items.append(member)
            elif member is not None:
                member = _plain(member)
                if member or type(member) is float:
                    items.append(member)
        return items
    if kind is dict:
        members: Any = value.items()
    elif kind in _RESPONSE_MODELS:
        members = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif kind is float:
        if value - value != 0.0:  # inf and NaN: pydantic writes null
            raise _NotPlainJson
        return value
    else:
        raise _NotPlainJson
    kept: dict[str, Any] = {}
    for key, member in members:
        if type(key) is not str:
            raise _NotPlainJson
        kind = type(member)
        if kind is str:
            if member:
                kept[key] = member
        elif kind is int or kind is bool:
            kept[key] = member
        elif member is not None:
            member = _plain(member)
            if member or type(member) is float:
                kept[key] = member
    return kept


#: The models ``_plain`` reads field by field; any other model (a subclass, a foreign one in ``extension``) falls back.
_RESPONSE_MODELS: frozenset[type[BaseModel]] = frozenset({Coding, Source, Link, Action, Suggestion, Card, HookResponse})


def to_json(response: HookResponse) -> dict[str, Any]:
    """The response body: pruned of null/empty members, keeping ``"cards": []``.

    One walk over the models (``_plain``) instead of ``model_dump`` then ``_prune``: 2x faster on the acceptance
    answer; the two-step path remains for values ``mode="json"`` would convert.
    """
    try:
        body: dict[str, Any] = _plain(response)
    except _NotPlainJson:
        body = _prune(response.model_dump(mode="json", exclude_none=True))
    body["cards"] = body.get("cards", [])
    return body


#: What ``orjson`` writes for a member the CDS Hooks writer drops: null, the empty string, an empty object or array.
#: Absent from a body's bytes, nothing in it needs pruning (a key or string that merely contains one only costs
#: the slow path).
_PRUNABLE = (b"null", b'""', b"{}", b"[]")
#: Anything ``mode="json"`` would write differently from orjson (dates, dataclasses, subclasses) makes orjson raise.
_EXACT_TYPES = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def response_json(cards: list[dict[str, Any]], system_actions: list[dict[str, Any]]) -> bytes:
    """The bytes of ``to_json(HookResponse(cards=cards, systemActions=system_actions))``, for cards and actions given
    in the models' JSON form (members in field order, the card builders' ``cards.py`` dicts).

    One serialisation: when orjson's bytes hold nothing the writer would prune, they are the answer as they are
    (no walk, no models). Otherwise the models' own path decides (``to_json``), so no answer can differ;
    ``tests/test_response_json.py`` compares both on hypothesis-drawn responses.
    """
    members: dict[str, Any] = {}
    if cards:
        members["cards"] = cards
    if system_actions:
        members["systemActions"] = system_actions
    if cards:
        try:
            raw = orjson.dumps(members, option=_EXACT_TYPES)
        except TypeError:  # orjson.JSONEncodeError: a value only the models' path converts
            pass
        else:
            # rfind, not ``in``: CPython's reverse search is twice as fast over JSON (12 vs 27 us on 7 KB), whose
            # frequent quotes slow the forward one.
            if all(raw.rfind(marker) < 0 for marker in _PRUNABLE):
                return raw
    return orjson.dumps(to_json(HookResponse.model_validate({"cards": cards, "systemActions": system_actions})))
