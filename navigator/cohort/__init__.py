"""Cohort re-analysis: the delivered dose of many past implants from a PACS export, and what it predicts."""
