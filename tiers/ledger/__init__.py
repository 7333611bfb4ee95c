"""The ledger: one row per request attempt, feedback on outcomes, and the numbers derived from them."""
