"""Clients of the incident ledger."""
