"""The incident domain: the aggregate, its events and rules, request records and time bounds."""
