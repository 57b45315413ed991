"""Build the serving backend from settings: champion (local, remote or a vLLM fleet), wrapped for canary routing."""

from core.settings import Settings
from service.backends.base import Backend
from service.backends.canary import CanaryBackend, Spec


def backend_for(settings: Settings, spec: Spec, fleet=None) -> Backend:
    """One backend serving one registry version (`fleet`: the vLLM replicas, with `HITL_BACKEND=vllm`)."""
    if settings.backend == "vllm":
        from service.backends.vllm import VllmBackend

        return VllmBackend(fleet, spec)
    if settings.backend == "openai":
        from service.backends.remote import RemoteBackend

        return RemoteBackend(settings.remote_base_url, spec.version, settings.remote_api_key)
    from service.backends.local import LocalBackend

    return LocalBackend(spec.base_path, spec.version, adapter_path=spec.adapter_path, device=settings.device,
                        max_batch_size=settings.max_batch_size, batch_wait_ms=settings.batch_wait_ms,
                        torch_threads=settings.torch_threads, max_queued=settings.max_queued_requests)


def build_backend(settings: Settings) -> CanaryBackend:
    """The champion from the registry (registering the base model on a fresh store), ready for a canary."""
    from core.db import session_scope
    from service import service

    if settings.backend == "openai":
        spec = Spec(settings.remote_model or "default", "")
    else:
        from service.model_init import ensure_base_model

        ensure_base_model(settings)
        with session_scope() as session:
            current = service.ensure_champion(session, settings)
            spec = Spec(current.version, current.base_path, current.adapter_path)
    fleet = None
    if settings.backend == "vllm":
        from service.backends.vllm import Fleet

        fleet = Fleet(settings.vllm_url_list, base_path=settings.base_model_path, api_key=settings.vllm_api_key,
                      keep=settings.vllm_keep, max_lora_rank=settings.vllm_max_lora_rank,
                      check_s=settings.vllm_check_s)
    return CanaryBackend(backend_for(settings, spec, fleet), lambda s: backend_for(settings, s, fleet),
                         settings.canary_share)
