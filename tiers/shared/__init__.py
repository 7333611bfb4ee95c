"""State that gateway replicas share through one Redis: rate limits, spend caps and budgets, reload announcements."""
