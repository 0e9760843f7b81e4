"""Metrics on the test set, and the one results file the dashboard reads."""
