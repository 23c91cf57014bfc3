"""The incident ledger service: domain, application, gRPC adapter, relay, read side and audit."""
