"""Serving: the OpenAI-compatible chat API, the model backends and the conversation log."""
