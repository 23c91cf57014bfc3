"""The incident domain: aggregates, their events and rules, and reference data."""
