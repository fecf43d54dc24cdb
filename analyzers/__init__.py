"""Analyzer workers: the statement stream turned into stats, business metrics, findings and the ledger cache."""
