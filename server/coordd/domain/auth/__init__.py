"""The auth domain: who may call. Users sign up and log in (passwords hashed with Argon2id
in their own pool, logins throttled) for short-lived access tokens; API keys are long-lived
credentials a user creates for services, workers and nodes; every call's credential
becomes a Principal here, checked against the user's access as it stands now. Admins
control accounts, and an audit trail records logins, denials and admin actions.

The api and other domains call `auth.<function>`; the modules are cut by responsibility:
users (account rules), login (sessions), api_keys, credentials (per-call authentication),
sessions (revocation and disabled users, per replica), throttle (failed logins),
accounts (account control), audit (the trail).
"""

from coordd.crypto.tokens import API_KEY_PREFIX
from coordd.domain.auth.accounts import (
    change_password,
    reset_password,
    revoke_tokens,
    set_disabled,
    set_roles,
)
from coordd.domain.auth.api_keys import create_api_key, list_api_keys, revoke_api_key
from coordd.domain.auth.audit import (
    AuditRow,
    is_admin_action,
    list_audit_events,
    record_admin_call,
    record_denial,
)
from coordd.domain.auth.credentials import (
    authenticate,
    authenticate_api_key,
    authenticate_now,
    authenticate_token,
    forget_api_key,
)
from coordd.domain.auth.login import Session, login, sign_up
from coordd.domain.auth.sessions import UserView, current_user
from coordd.domain.auth.users import EMAIL_RE, MAX_PASSWORD, MIN_PASSWORD, create_user, get_user
from coordd.store.auth.models import ApiKey, User

__all__ = [
    "API_KEY_PREFIX",
    "EMAIL_RE",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "ApiKey",
    "AuditRow",
    "Session",
    "User",
    "UserView",
    "authenticate",
    "authenticate_api_key",
    "authenticate_now",
    "authenticate_token",
    "change_password",
    "create_api_key",
    "create_user",
    "current_user",
    "forget_api_key",
    "get_user",
    "is_admin_action",
    "list_api_keys",
    "list_audit_events",
    "login",
    "record_admin_call",
    "record_denial",
    "reset_password",
    "revoke_api_key",
    "revoke_tokens",
    "set_disabled",
    "set_roles",
    "sign_up",
]
