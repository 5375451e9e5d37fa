"""The model: the OpenAI-compatible client, token counting, the tool loop, moderation."""
