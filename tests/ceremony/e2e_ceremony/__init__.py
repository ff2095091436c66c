"""Ceremony test support: helpers for the service tests and the snarkjs end-to-end fixtures."""
