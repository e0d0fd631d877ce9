"""The agent on any OpenAI-compatible Chat Completions endpoint (the optional `openai` SDK), hosted or local."""
