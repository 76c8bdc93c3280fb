"""Roles: named bundles of scopes, for API keys (``server-key create --role``) and OIDC claims.

Seed rule: only authorised readers (attending radiologists, fellows) see AI segmentations. So
seeing a job's *state* (``status``) is separate from fetching its *results* (``read``):

============  ===========================================  ==============================
role          may                                          scopes
============  ===========================================  ==============================
submitter     submit jobs, follow and cancel its own       status, submit
viewer        its own jobs' state and results              read
reviewer      state and results of every client's job      read, review
auditor       the audit trail and the server's health      status, audit
admin         everything, every client's jobs              read, submit, audit, admin
monitor       ``GET /metrics`` only (Prometheus)           metrics
dashboard     ``GET /dashboard`` only (charts, no job)     dashboard
============  ===========================================  ==============================

``read`` implies ``status``; ``review`` lets GET routes reach other clients' jobs (never cancel
or push them); ``admin`` reaches every job.
"""

from __future__ import annotations

from aiportal.errors import AIPortalError

ROLES: dict[str, tuple[str, ...]] = {
    "submitter": ("status", "submit"),
    "viewer": ("read",),
    "reviewer": ("read", "review"),
    "auditor": ("status", "audit"),
    "admin": ("read", "submit", "audit", "admin"),
    "monitor": ("metrics",),  # Prometheus' own credential: counts and latencies, no job or image
    "dashboard": ("dashboard",),  # the dashboard page: the same counts and the governance figures, no job
}
IMPLIED = {"read": ("status",), "admin": ("review", "metrics", "dashboard")}

#: identity-provider role -> scopes; the aiportal-<role> names follow ROLES, the older names stay valid.
OIDC_ROLE_SCOPES: dict[str, list[str]] = {
    **{f"aiportal-{role}": list(scopes) for role, scopes in ROLES.items()},
    "aiportal-reader": ["read"],
    "aiportal-user": ["read", "submit"],
}


def expand(scopes: frozenset[str] | set[str]) -> frozenset[str]:
    """``scopes`` with the ones they imply."""
    return frozenset(scopes) | {implied for scope in scopes for implied in IMPLIED.get(scope, ())}


def role_scopes(role: str) -> tuple[str, ...]:
    if role not in ROLES:
        raise AIPortalError(f"unknown role {role!r}", f"use one of: {', '.join(ROLES)}")
    return ROLES[role]


def may_reach(scopes: frozenset[str], owner: str, subject: str, reading: bool) -> bool:
    """Whether a principal may see (``reading``) or act on another client's job."""
    if owner == subject or "admin" in scopes:
        return True
    return reading and "review" in scopes
