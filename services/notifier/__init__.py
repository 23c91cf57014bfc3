"""The notifier: delivers the ledger's recorded events to subscribers (gRPC streams, webhooks)."""
