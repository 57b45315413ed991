"""Build options (API body, CLI flags and Python API share them) and API responses."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Kind = Literal["sft", "dpo", "kto"]
KINDS: tuple[str, ...] = ("sft", "dpo", "kto")
SPLITS: tuple[str, ...] = ("train", "validation", "test")  # training reads validation; only the gates read test
ANCHOR = ("sft", "anchor")  # sft.anchor.jsonl: served replies training holds steady (see anchors.py)


class BuildOptions(BaseModel):
    """What a build reads and how it cleans. Defaults suit the nightly retrain."""

    model_config = {"extra": "forbid"}

    kinds: list[Kind] | None = Field(None, description="Kinds to build; None = all three, and a KTO set missing a "
                                     "class is then left empty (recorded) instead of failing the build.")
    as_of: datetime | None = Field(None, description="Read only feedback (and, for anchors, replies) created at or "
                                     "before this time.")
    validation_fraction: float = Field(0.1, ge=0, le=0.5, description="Target share of new question groups "
                                       "in validation (early stopping, model choice). Assigned groups never move.")
    test_fraction: float = Field(0.2, ge=0, le=0.5, description="Target share of new question groups in test "
                                 "(read only by the gates). Assigned groups never move.")
    question_similarity: float = Field(0.7, gt=0, le=1, description="Questions (normalized last user turns) "
                                       "whose estimated Jaccard of word 3-grams reaches this are one group.")
    split_salt: str = Field("hitl", description="Orders new question groups for assignment; assigned groups "
                            "keep their split whatever the salt.")
    sft_min_score: int = Field(4, ge=1, le=5, description="A reply is top-rated when every rubric dimension ≥ this.")
    bad_max_score: int = Field(2, ge=1, le=5, description="A reply is bad when any rubric dimension ≤ this.")
    dpo_rating_margin: float = Field(1.0, ge=0, description="Mean-score gap for a DPO pair between two replies "
                                     "to the same context.")
    min_agreement: float = Field(0.7, gt=0.5, le=1, description="Reliability-weighted share the majority needs; "
                                 "below it the item is an unresolved conflict and left out.")
    end_user_weight: float = Field(0.5, ge=0, le=1, description="Vote weight of an end user's thumbs.")
    correction_similarity: float = Field(0.8, gt=0, le=1, description="Corrections of one reply whose word-set "
                                         "Jaccard reaches this (or whose words are equal) are one version.")
    correction_margin: float = Field(0.25, ge=0, description="Differing corrections of one reply: the version "
                                     "whose reviewers weigh most wins if it outweighs the next by this factor "
                                     "(1 + margin); otherwise the reply waits for adjudication.")
    exclude_tags: list[str] = Field(["unsafe", "pii"], description="Flag tags that exclude a reply and every "
                                    "example whose context contains it.")
    redact_pii: bool = True
    max_tokens: int = Field(2048, ge=16, description="Longest example (prompt + completion) in tokenizer tokens.")
    tokenizer: str | None = Field(None, description="Tokenizer path; default the base model.")
    near_duplicate_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard of word 3-grams.")
    replay_fraction: float = Field(0.0, ge=0, le=1, description="Replay rows added to SFT train, as a share "
                                   "of the feedback SFT train rows.")
    anchors: int = Field(0, ge=0, le=100_000, description="Most recent served replies nobody faulted, written "
                         "as sft.anchor.jsonl: SFT with sft.anchor_weight > 0 keeps the candidate's token "
                         "distributions on them equal to the champion's, against forgetting (0 = off).")
    anchor_general: int = Field(0, ge=0, le=10_000, description="Rows of the shipped general pool "
                                "(retrain/datasets/data/general.jsonl) added to the anchors, not trained on.")
    paraphrases: int = Field(0, ge=0, le=10, description="Paraphrase variants per corrected prompt (0 = off), "
                             "asked of the endpoint in HITL_REMOTE_BASE_URL (settings only, never a request).")
    paraphrase_model: str | None = Field(None, description="Model name at that endpoint; default HITL_REMOTE_MODEL.")
    paraphrase_max_tokens: int = Field(256, ge=8, le=2048, description="Longest paraphrase asked for.")

    @model_validator(mode="after")
    def _train_keeps_a_share(self) -> "BuildOptions":
        if self.validation_fraction + self.test_fraction > 0.9:
            raise ValueError("validation_fraction + test_fraction must be at most 0.9")
        return self


class SnapshotCreated(BaseModel):
    id: int
    hash: str
    counts: dict[str, Any]
    created: bool = Field(description="False when an identical snapshot already existed.")
