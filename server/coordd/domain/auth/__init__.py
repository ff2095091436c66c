"""The auth domain: who may call. Users sign up and log in (passwords hashed with Argon2id)
for short-lived access tokens; API keys are long-lived credentials a user creates for
services, workers and nodes; every call's credential becomes a Principal here.

The api and other domains call `auth.<function>`; the modules are cut by responsibility:
users (account rules), login (sessions), api_keys, credentials (per-call authentication).
"""

from coordd.crypto.tokens import API_KEY_PREFIX
from coordd.domain.auth.api_keys import create_api_key, list_api_keys, revoke_api_key
from coordd.domain.auth.credentials import authenticate_api_key, authenticate_token, forget_api_key
from coordd.domain.auth.login import Session, login, sign_up
from coordd.domain.auth.users import EMAIL_RE, MAX_PASSWORD, MIN_PASSWORD, create_user, get_user
from coordd.store.auth.models import ApiKey, User

__all__ = [
    "API_KEY_PREFIX",
    "EMAIL_RE",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "ApiKey",
    "Session",
    "User",
    "authenticate_api_key",
    "authenticate_token",
    "create_api_key",
    "create_user",
    "forget_api_key",
    "get_user",
    "list_api_keys",
    "login",
    "revoke_api_key",
    "sign_up",
]
