"""The Claude agent: a tool-using research agent on the anthropic SDK."""
