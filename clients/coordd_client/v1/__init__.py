"""Generated coordd.v1 messages and stubs (make protos)."""
