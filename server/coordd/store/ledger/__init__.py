"""The ledger's tables (`models`) and the statements that read and write them (`queries`)."""
