"""Service functions of the API, one module per resource: keys, datasets, jobs, progress, rewards. Call sites import the
module they need (`from api.services import jobs as jobs_service`); this package holds only the errors they share.

Every read takes the tenant and filters by it, so another tenant's id behaves exactly like an id that does not
exist."""

from __future__ import annotations


class NotFound(Exception):
    def __init__(self, what: str, object_id: str):
        super().__init__(f"{what} {object_id!r} not found")


class InvalidInput(Exception):
    def __init__(self, message: str, errors: list[str] | None = None, status_code: int = 422):
        super().__init__(message)
        self.errors = errors or []
        self.status_code = status_code


class Unavailable(Exception):
    """The service cannot do this here (an operator's problem, not the request's): answered 503 with the reason."""
