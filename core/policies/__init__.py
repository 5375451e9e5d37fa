"""Who may ask how much: access lists, the rate limit, the budget, usage, the cache."""
