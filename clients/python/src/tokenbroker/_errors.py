"""TokenError: the one exception a source raises when it has no token to give, carrying
the broker's status (or a watch event's reason) and message."""

from __future__ import annotations

import grpc


class TokenError(Exception):
    """No token could be had.

    ``code`` is the gRPC status name the broker answered (``"NOT_FOUND"``,
    ``"UNAVAILABLE"``, ``"UNAUTHENTICATED"``, ...; ``"DEADLINE_EXCEEDED"`` when the timeout
    ran out first), or the reason of the watch event that emptied the source
    (``"REVOKED"``, ``"UNAVAILABLE"``). ``message`` is the broker's message or the event's
    detail, for people.
    """

    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> TokenError:
        """The error for a failed gRPC call: its status code's name and its details."""
        if isinstance(error, grpc.Call):
            return cls(error.code().name, error.details() or "")
        return cls("UNKNOWN", str(error))
