"""The auth domain's tables (users, API keys) and every query the auth rules need."""
