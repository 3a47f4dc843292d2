"""Brokers: the stub (tests), Redis (production) and database (embedded default)."""
