"""The gRPC face of the ledger: the servicers (the protobuf translation is services.ledger.wire)."""
