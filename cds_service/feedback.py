"""The CDS Hooks 2.0 feedback request (``POST /cds-services/{id}/feedback``) as pydantic models.

A tolerant reader: unknown members and ``extension`` are ignored, JSON ``null`` counts as absent, and
``acceptedSuggestions`` may be missing on an ``accepted`` outcome (some clients accept a card without
a suggestion). What cannot be stored or compared safely is refused with a ``ProtocolError``: wrong
types, an outcome outside the enum, a timestamp without a time zone, text the databases cannot hold
(NUL, lone surrogates), members that contradict the outcome, and oversized lists or strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from cds_service.errors import ProtocolError

#: Most feedback entries one request may carry (a client reports interactions as they happen).
MAX_FEEDBACK_ITEMS = 100
#: Most accepted suggestions per entry (a card carries a handful).
MAX_ACCEPTED_SUGGESTIONS = 50
MAX_ID_CHARS = 128
MAX_CODE_CHARS = 256
MAX_URI_CHARS = 1024
MAX_COMMENT_CHARS = 4096
#: Longest timestamp string worth parsing ("2021-12-11T10:05:31.123456789+05:30" is 35).
MAX_TIMESTAMP_CHARS = 64


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL; refusing it here keeps a 400 from becoming a 503.

    (Lone surrogates, which no database stores either, are already refused by pydantic's ``str``.)
    """
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _utc_instant(value: Any) -> datetime:
    """An ISO 8601 / RFC 3339 instant with an offset, as UTC, so equal instants compare (and dedupe) equal."""
    if isinstance(value, str):
        if len(value) > MAX_TIMESTAMP_CHARS:
            raise ValueError("is too long to be a timestamp")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time such as 2021-12-11T10:05:31Z") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        # ValueError, not TypeError: pydantic turns only ValueError into a validation error.
        raise ValueError("must be an ISO 8601 date-time string")  # noqa: TRY004
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("must include a time zone (Z or an offset)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the representable range") from None


Identifier = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(_not_blank),
    AfterValidator(_storable),
]
Code = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_CODE_CHARS),
    AfterValidator(_not_blank),
    AfterValidator(_storable),
]
UriText = Annotated[StrictStr, StringConstraints(max_length=MAX_URI_CHARS), AfterValidator(_storable)]
Comment = Annotated[StrictStr, StringConstraints(max_length=MAX_COMMENT_CHARS), AfterValidator(_storable)]
UtcInstant = Annotated[datetime, BeforeValidator(_utc_instant)]


class _WireModel(BaseModel):
    """Shared reader settings: ignore unknown members, never coerce to strings, accept Python names too."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        validate_by_alias=True,
        validate_by_name=True,
        hide_input_in_errors=True,
    )


class Coding(_WireModel):
    """CDS Hooks Coding; ``system`` is required by the spec but tolerated missing so the feedback is kept."""

    code: Code
    system: UriText | None = None
    display: UriText | None = None


class OverrideReason(_WireModel):
    """Why the user overrode the card: a coded reason, a free-text comment, or both."""

    reason: Coding | None = None
    user_comment: Comment | None = Field(default=None, alias="userComment")


class AcceptedSuggestion(_WireModel):
    """One accepted suggestion, identified by the ``suggestion.uuid`` the service sent."""

    id: Identifier


class FeedbackItem(_WireModel):
    """One end-user interaction with a card; ``outcome_timestamp`` is always UTC."""

    card: Identifier
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: Annotated[tuple[AcceptedSuggestion, ...], Field(max_length=MAX_ACCEPTED_SUGGESTIONS)] = Field(
        default=(), alias="acceptedSuggestions"
    )
    override_reason: OverrideReason | None = Field(default=None, alias="overrideReason")
    outcome_timestamp: UtcInstant = Field(alias="outcomeTimestamp")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """A JSON null list means no suggestions (the spec's omitted member)."""
        if isinstance(data, dict):
            for key in ("acceptedSuggestions", "accepted_suggestions"):
                if key in data and data[key] is None:
                    data = {k: v for k, v in data.items() if k != key}
        return data

    @model_validator(mode="after")
    def _members_match_outcome(self) -> FeedbackItem:
        """Suggestions are accepted, cards are overridden: a mix means the client mis-reported."""
        if self.outcome == "overridden" and self.accepted_suggestions:
            raise ValueError("acceptedSuggestions is allowed only with outcome 'accepted'")
        if self.outcome == "accepted" and self.override_reason is not None:
            raise ValueError("overrideReason is allowed only with outcome 'overridden'")
        return self

    @property
    def suggestion_ids(self) -> tuple[str, ...]:
        """The accepted suggestion uuids, in the order the client sent them."""
        return tuple(suggestion.id for suggestion in self.accepted_suggestions)


class FeedbackRequest(_WireModel):
    """The request body: ``{"feedback": [Feedback, ...]}``."""

    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)]


def _path(loc: tuple[int | str, ...]) -> str:
    """('feedback', 0, 'outcome') -> 'feedback[0].outcome', the FHIRPath-like form OperationOutcome shows."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "feedback"


def _message(error: ErrorDetails) -> str:
    """Pydantic's message without its 'Value error, ' prefix and never with the offending input."""
    context = error.get("ctx") or {}
    if error["type"] == "value_error" and isinstance(context.get("error"), Exception):
        return str(context["error"])
    return error["msg"]


def _location(error: ErrorDetails) -> tuple[int | str, ...]:
    """Drop pydantic's internal step names (function-after[...], tagged unions) from an error location."""
    return tuple(part for part in error["loc"] if isinstance(part, int) or "[" not in part)


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Validate a decoded feedback request body; any defect is a ``ProtocolError`` naming where it is."""
    if not isinstance(body, dict):
        raise ProtocolError("feedback: the request body must be a JSON object", expression=["feedback"])
    try:
        request = FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]  # a ValidationError always carries at least one error
        where = _path(_location(first))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ProtocolError(f"{where}: {_message(first)}{more}", expression=[where]) from None
    return request.feedback
