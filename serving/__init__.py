"""Serving: the continuous-batching engine, the OpenAI-compatible HTTP API, the chat
page and the terminal chat. Imports model, data_pipeline and engine's checkpoint
readers, never a stage."""
