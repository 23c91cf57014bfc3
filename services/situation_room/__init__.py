"""The situation room: a web page over the ledger's public gRPC API (docs/situation-room.md)."""
