"""One settings object for the whole service, read from `HITL_*` environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HITL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Everything written at run time lives here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    base_model: str | None = Field(None, description="Local Hugging Face checkpoint; default: converted SmolLM2.")

    host: str = "127.0.0.1"
    port: int = 8000
    admin_key: str | None = Field(None, description="Bootstrap admin key; generated into data_dir if unset.")

    backend: Literal["local", "openai"] = Field("local", description="In-process model or remote OpenAI-compatible server.")
    remote_base_url: str | None = None
    remote_api_key: str = "EMPTY"
    remote_model: str | None = None

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = Field(256, description="Default completion length when a request gives none.")
    max_tokens_limit: int = Field(1024, description="Largest max_tokens a request may ask for.")
    max_messages: int = Field(200, description="Largest number of messages in one chat request.")
    max_content_chars: int = Field(32_000, description="Largest message content accepted.")
    max_batch_size: int = Field(8, description="Concurrent requests decoded together on the local model.")
    batch_wait_ms: float = Field(5.0, description="How long the batcher waits to fill a batch.")
    device: str | None = Field(None, description="torch device; default cuda when available, else cpu.")

    log_format: Literal["text", "json"] = Field("text", description="`json` for one structured object per line.")
    scheduler_enabled: bool = Field(True, description="Run the retrain scheduler inside `hitl serve`.")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hitl.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def base_model_path(self) -> Path:
        return Path(self.base_model) if self.base_model else self.models_dir / DEFAULT_MODEL_NAME


@lru_cache
def get_settings() -> Settings:
    return Settings()
