"""CLI commands (placeholder module, filled by its issue)."""
