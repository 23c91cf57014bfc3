"""The gRPC face of the ledger: translation between protobuf and the application."""
