"""API request/response models. Write bodies list their fields explicitly and forbid extras, so a
client can never set ids, reviewers or timestamps (no mass assignment)."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from feedback.models import ComparisonChoice, ReviewClaimStatus, ThumbsSource, ThumbsValue
from service.models import MessagePublic


def _write(example: dict) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})


Text = Field(None, max_length=10_000)
Likert = Annotated[int, Field(ge=1, le=5, strict=True)]


class FeedbackIn(BaseModel):
    model_config = _write({"message_id": "msg_0123456789abcdef01234567", "thumbs": "down",
                           "comment": "The answer ignores my question."})
    message_id: str = Field(max_length=40)
    thumbs: ThumbsValue
    comment: str | None = Text


class ThumbsOut(BaseModel):
    id: int
    message_id: str
    thumbs: ThumbsValue
    comment: str | None
    source: ThumbsSource
    created_at: datetime


class RatingIn(BaseModel):
    model_config = _write({"scores": {"correctness": 4, "helpfulness": 5, "tone": 5}, "comment": "Good."})
    scores: dict[str, Likert] = Field(min_length=1, max_length=50, description="Likert 1..5 per rubric dimension.")
    comment: str | None = Text


class RatingOut(BaseModel):
    id: int
    message_id: str
    reviewer_id: int
    scores: dict[str, int]
    comment: str | None
    adjudicated: bool
    created_at: datetime


class CorrectionIn(BaseModel):
    model_config = _write({"content": "Paris is the capital of France."})
    content: str = Field(min_length=1, max_length=32_000)


class CorrectionOut(BaseModel):
    id: int
    message_id: str
    reviewer_id: int
    content: str
    original: str
    diff: str
    created_at: datetime


class CandidateOut(BaseModel):
    candidate_id: int
    content: str
    model_version: str | None
    seed: int | None


class ComparisonIn(BaseModel):
    model_config = _write({"candidate_a": 1, "candidate_b": 2, "choice": "a"})
    candidate_a: int
    candidate_b: int
    choice: ComparisonChoice


class ComparisonOut(BaseModel):
    id: int
    message_id: str
    reviewer_id: int
    candidate_a: int
    candidate_b: int
    choice: ComparisonChoice
    created_at: datetime


class FlagIn(BaseModel):
    model_config = _write({"tags": ["pii", "unsafe"], "comment": "Leaks a phone number."})
    tags: list[str] = Field(min_length=1, max_length=20)
    comment: str | None = Text

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        tags = sorted({t.strip().lower() for t in v})
        if any(not t or len(t) > 50 for t in tags):
            raise ValueError("tags are non-empty strings of at most 50 characters")
        return tags


class FlagOut(BaseModel):
    id: int
    message_id: str
    reviewer_id: int
    tags: list[str]
    comment: str | None
    created_at: datetime


class CommentIn(BaseModel):
    model_config = _write({"text": "The user probably meant the 2024 figures."})
    text: str = Field(min_length=1, max_length=10_000)


class CommentOut(BaseModel):
    id: int
    message_id: str
    reviewer_id: int
    text: str
    created_at: datetime


class SkipIn(BaseModel):
    model_config = _write({"reason": "Needs medical knowledge."})
    reason: str | None = Text


class GoldIn(BaseModel):
    model_config = _write({"message_id": "msg_0123456789abcdef01234567",
                           "scores": {"correctness": 1, "helpfulness": 2, "tone": 4}})
    message_id: str = Field(max_length=40)
    scores: dict[str, Likert] = Field(min_length=1, max_length=50, description="The known answer per rubric dimension.")


class AdjudicationIn(BaseModel):
    model_config = _write({"scores": {"correctness": 3, "helpfulness": 3, "tone": 4}, "comment": "Final."})
    scores: dict[str, Likert] = Field(min_length=1, max_length=50)
    comment: str | None = Text
    correction: str | None = Field(None, min_length=1, max_length=32_000,
                                   description="The final corrected reply, when reviewers' corrections conflict.")


class ClaimOut(BaseModel):
    message_id: str
    conversation_id: str
    conversation: list[MessagePublic] = Field(description="The context up to and including the reply under review.")
    lease_expires_at: datetime | None = Field(description="End of your lease (null when an admin reads any item).")
    reason: str | None = Field(description="Why it is queued: thumbs_down, low_confidence, calibration, gold, manual.")
    rubric: list[str]
    guidelines: dict[str, str]


class ClaimStateOut(BaseModel):
    message_id: str
    status: ReviewClaimStatus
    item_status: str | None = None


class RubricOut(BaseModel):
    rubric: list[str]
    guidelines: dict[str, str]
    lease_minutes: float
    reviews_per_item: int


class DeletionOut(BaseModel):
    id: int
    conversation_id: str | None
    end_user: str | None
    conversation_ids: list[str]
    requested_by: int | None
    created_at: datetime


class AuditOut(BaseModel):
    id: int
    actor_id: int | None
    action: str
    entity: str
    entity_id: str | None
    message_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    created_at: datetime


class AuditPage(BaseModel):
    data: list[AuditOut]
    count: int
    next_after_id: int | None = Field(description="Pass as `after_id` for the next page; null at the end.")


class ImportLineError(BaseModel):
    line: int = Field(description="1-based line number in the file")
    error: str


class ImportOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "lines": 3, "conversations": 1, "replies": 1, "thumbs": 1, "ratings": 0, "queued": 1, "duplicates": 1,
        "skipped_deleted": 0, "by_source": {"openai": 1}, "errors": [{"line": 3, "error": "not valid JSON: ..."}],
        "error_count": 1}]})
    lines: int = Field(description="Non-empty lines read")
    conversations: int = Field(description="Conversations imported now")
    replies: int = Field(description="Assistant replies imported (each reviewable)")
    thumbs: int
    ratings: int
    queued: int = Field(description="Replies put in the review queue (thumbs-down, calibration sample)")
    duplicates: int = Field(description="Records whose key was imported before (this file or an earlier one)")
    skipped_deleted: int = Field(description="Records of end users deleted for privacy")
    by_source: dict[str, int] = Field(description="Conversations imported per format (openai, langfuse)")
    errors: list[ImportLineError] = Field(description="Bad lines (the first 1000), each skipped alone")
    error_count: int
