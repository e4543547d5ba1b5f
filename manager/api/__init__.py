"""The manager's REST API: ``create_api(control, store, auth, settings)`` and bearer-token identity."""

from manager.api.auth import ADMIN_CUSTOMER, AuthError, Caller, TokenAuth
from manager.api.routes import API_PREFIX, create_api

__all__ = ["ADMIN_CUSTOMER", "API_PREFIX", "AuthError", "Caller", "TokenAuth", "create_api"]
