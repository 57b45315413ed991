"""One settings object for the whole service, read from `HITL_*` environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.webhooks import WebhookTarget

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Everything written at run time lives here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    base_model: str | None = Field(None, description="Local Hugging Face checkpoint; default: converted SmolLM2.")

    host: str = "127.0.0.1"
    port: int = 8000
    admin_key: str | None = Field(None, description="Bootstrap admin key; generated into data_dir if unset.")

    backend: Literal["local", "openai", "vllm"] = Field(
        "local", description="In-process model, a remote OpenAI-compatible server, or a vLLM fleet whose LoRA "
        "adapters hitl loads and unloads (vllm_urls).")
    remote_base_url: str | None = None
    remote_api_key: str = "EMPTY"
    remote_model: str | None = None
    vllm_urls: str = Field("", description="With backend vllm: comma-separated replica URLs (http://host:8000).")
    vllm_api_key: str = Field("EMPTY", description="The replicas' --api-key, if any.")
    vllm_keep: int = Field(2, ge=0, description="Versions served before that stay loaded on the replicas (rollback "
                           "without a load); older ones are unloaded.")
    vllm_max_lora_rank: int = Field(16, ge=1, description="The replicas' --max-lora-rank: higher-rank adapters are "
                                    "refused, and retraining compresses stacked adapters to it.")
    vllm_check_s: float = Field(2.0, gt=0, description="How often each replica's adapters and health are checked.")

    temperature: float | None = Field(None, ge=0, le=2, description="Temperature of chat requests that set none; "
                                      "unset: the model's generation_config (greedy unless it samples; a remote "
                                      "upstream applies its own).")
    top_p: float | None = Field(None, gt=0, le=1, description="top_p of chat requests that set none; unset: as "
                                "temperature.")
    max_tokens: int = Field(256, description="Default completion length when a request gives none.")
    max_tokens_limit: int = Field(1024, description="Largest max_tokens a request may ask for.")
    max_messages: int = Field(200, description="Largest number of messages in one chat request.")
    max_content_chars: int = Field(32_000, description="Largest message content accepted.")
    max_parts: int = Field(1_000, description="Largest number of content parts in one chat request.")
    max_request_chars: int = Field(128_000, description="Largest total of characters over a chat request's messages.")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body (413), checked before it is parsed "
                                "or the caller authenticated: by Content-Length and by counting streamed bytes.")
    max_import_bytes: int = Field(268_435_456, gt=0, description="Largest body of `POST /api/import` (413): "
                                  "a JSONL file of logs.")
    body_timeout_s: float = Field(30, gt=0, description="A request body not received within this time is a 408.")
    rate_limit_per_s: float = Field(100, ge=0, description="Requests per second per API key (or session, or "
                                    "anonymous client address) over time; beyond it 429 with Retry-After; 0 = no limit.")
    rate_limit_burst: int = Field(500, ge=1, description="Requests a key may send at once before rate_limit_per_s applies.")
    max_queued_requests: int = Field(256, ge=1, description="Chat requests waiting for the local model; beyond it 503 "
                                     "with Retry-After.")
    candidate_concurrency: int = Field(2, ge=1, description="Candidate generations one reviewer may run at once; "
                                       "beyond it 429 with Retry-After.")
    max_connections: int = Field(1000, ge=1, description="Open client connections `hitl serve` keeps; a request on one "
                                 "more is answered 503 with Retry-After and its connection closed.")
    header_timeout_s: float = Field(10, gt=0, description="A connection that has not sent a whole request head this "
                                    "long after it opened (or after its previous response) is closed.")
    keep_alive_s: float = Field(5, gt=0, description="An idle keep-alive connection is closed after this long.")
    max_batch_size: int = Field(8, description="Concurrent requests decoded together on the local model.")
    batch_wait_ms: float = Field(5.0, description="How long the batcher waits to fill a batch.")
    device: str | None = Field(None, description="torch device; default cuda when available, else cpu.")
    torch_threads: int = Field(0, ge=0, description="CPU threads for the local model; 0 = torch's default.")
    log_conversations: bool = Field(True, description="Store every chat exchange (off only to measure overhead).")
    canary_share: float = Field(0.0, ge=0, le=1, description="Share of new conversations sent to the `challenger`.")

    log_format: Literal["text", "json"] = Field("text", description="`json` for one structured object per line.")
    session_secret: str | None = Field(
        None, description="Signs the web UI's session cookies; generated into data_dir if unset (replicas: share it).")
    session_cookie_secure: bool | None = Field(
        None, description="`Secure` on the session cookie; unset: on unless the site is served as localhost.")
    metrics_key: str | None = Field(None, description="If set, `/metrics` needs `Authorization: Bearer <metrics_key>`.")
    retrain_cron: str = Field("0 2 * * *", description="Crontab of the scheduled retrain (default nightly, 02:00).")
    retrain_timezone: str = Field("UTC", description="Time zone of retrain_cron.")
    retrain_misfire_grace_s: int = Field(
        7 * 24 * 3600, description="A missed trigger still runs (once) at start-up if it is at most this old.")
    retrain_min_feedback: int = Field(
        20, description="Scheduled runs need this much new feedback since the last run; else skipped.")
    retrain_config: Path | None = Field(None, description="YAML file with RetrainConfig values.")
    retrain_stale_s: int = Field(300, description="A queued run with no process this long is resumed.")
    retrain_lease_s: float = Field(60, gt=0, description="A running run's process refreshes its heartbeat in the "
                                   "database; one silent this long is dead: marked failed, it never blocks a new run.")
    scheduler_enabled: bool = Field(True, description="Run the retrain scheduler inside `hitl serve`.")
    gate_policy: Path | None = Field(None, description="YAML gate policy merged over evaluators/policy.yaml.")

    webhooks: list[WebhookTarget] = Field([], description="JSON list of {\"url\": ..., \"events\": [...]} (no "
                                          "events: all); see core/webhooks.py for the events.")
    webhook_max_attempts: int = Field(6, ge=1, description="Attempts per webhook delivery before it is failed.")
    webhook_backoff_s: float = Field(5.0, gt=0, description="Delay before the first retry; doubles each retry.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time a webhook receiver has to answer one post.")
    webhook_poll_s: float = Field(2.0, gt=0, description="How often due deliveries are posted (and the queue checked).")
    webhook_queue_depth: int = Field(0, ge=0, description="Open review items at which `review_queue.depth` fires "
                                     "(again once it fell below); 0 = off.")

    review_rubric: list[str] = Field(["correctness", "helpfulness", "tone"], description="Rubric dimensions (Likert 1-5).")
    review_guidelines: dict[str, str] = Field({
        "correctness": "1 = wrong or made up, 3 = partly right, 5 = fully right and complete.",
        "helpfulness": "1 = ignores the request, 3 = useful but incomplete, 5 = solves the user's need.",
        "tone": "1 = rude or unsafe, 3 = acceptable, 5 = friendly, clear and concise.",
    }, description="Guideline text per rubric dimension, shown to reviewers.")
    review_lease_minutes: float = Field(10.0, description="How long a claimed review item stays held.")
    review_k: int = Field(1, ge=1, description="Reviews each queued item needs (overlap k).")
    review_calibration_rate: float = Field(0.05, ge=0, le=1, description="Share of other replies sampled into the queue.")
    review_low_confidence: float = Field(-1.5, description="Mean token log-prob below which a reply is queued as low confidence.")
    review_disagreement_threshold: float = Field(1.0, description="Score spread (max-min) above which an item goes to adjudication.")
    review_gold_rate: float = Field(
        0.1, ge=0, le=1, description="Share of each reviewer's claims served from gold items it has not answered yet "
        "(once an admin has marked gold items); 0 = only the ordinary queue.")
    review_gold_tolerance: int = Field(
        1, ge=0, le=4, description="A score on a gold item within this many points of the known answer counts as correct.")
    review_reliability_prior: tuple[float, float] = Field(
        (2.0, 1.0), description="Beta(a, b) prior of a reviewer's gold reliability (mean a/(a+b)): few gold answers "
        "never give 0 or 1.")
    review_reliability_floor: float = Field(
        0.5, ge=0, le=1, description="Reviewers whose gold reliability is below this are flagged and their labels "
        "weigh nothing in dataset builds.")
    review_good_min_score: int = Field(
        4, ge=1, le=5, description="A rating with every dimension at least this says the reply is good (a correction "
        "of such a reply goes to adjudication).")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hitl.db').resolve()}"

    @property
    def vllm_url_list(self) -> list[str]:
        return [u.strip() for u in self.vllm_urls.split(",") if u.strip()]

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def base_model_path(self) -> Path:
        return Path(self.base_model) if self.base_model else self.models_dir / DEFAULT_MODEL_NAME


@lru_cache
def get_settings() -> Settings:
    return Settings()
