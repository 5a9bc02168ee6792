"""The ai migration set: the AI router and chat schema, with its own version table."""
