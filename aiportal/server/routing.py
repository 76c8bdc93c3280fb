"""What the router does not say on its own: every method a path allows (for a 405's ``Allow``)."""

from __future__ import annotations

from starlette.routing import Match


def allowed_methods(app, scope) -> str:
    """All methods of the routes matching this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE or route.matches({**scope, "method": "POST"})[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    methods.discard("HEAD")
    return ", ".join(sorted(methods))
