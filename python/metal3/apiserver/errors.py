"""API errors in the Kubernetes `Status` shape (meta/v1 Status, `status: Failure`)."""

from __future__ import annotations

from typing import Any

# One reason a write is invalid: (field, reason such as FieldValueRequired, message).
Cause = tuple[str, str, str]

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
}


class ApiError(Exception):
    """A failed request; `status()` is the body the real API server would send."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(resource: str, group: str) -> str:
    """`baremetalhosts.metal3.io`, or just `secrets` for the core group."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        f'{qualified(resource, group)} "{name}" not found',
        "NotFound",
        {"name": name, "group": group, "kind": resource},
    )


def method_not_allowed(method: str) -> ApiError:
    return ApiError(
        405,
        f"the server does not allow this method on the requested resource ({method})",
        "MethodNotAllowed",
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        f'{qualified(resource, group)} "{name}" already exists',
        "AlreadyExists",
        {"name": name, "group": group, "kind": resource},
    )


def conflict(resource: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version"
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}'
        + (" and try again" if why.startswith("the object has been modified") else ""),
        "Conflict",
        {"name": name, "group": group, "kind": resource},
    )


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid; `causes` are (field, reason, message) like FieldValueRequired."""
    qual = f"{kind}.{group}" if group else kind
    summary = ", ".join(f"{field}: {message}" if field else message for field, _, message in causes)
    text = f'{qual} "{name}" is invalid: {summary}'
    if len(causes) > 1:
        text = f'{qual} "{name}" is invalid: [{summary}]'
    return ApiError(
        422,
        text,
        "Invalid",
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": reason, "message": message, "field": field}
                for field, reason, message in causes
            ],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")
