"""One exception tree for raylane; each class maps to one CLI exit code and one HTTP status.

```
RaylaneError                      exit 1   HTTP 500  server_error
├── ConfigError                   exit 2   HTTP 400  invalid_request_error
├── InvalidRequestError           exit 2   HTTP 400  invalid_request_error
├── AuthenticationError           exit 1   HTTP 401  authentication_error
├── PermissionDeniedError         exit 1   HTTP 403  permission_error
├── NotFoundError                 exit 1   HTTP 404  not_found_error
├── MethodNotAllowedError         exit 2   HTTP 405  invalid_request_error
├── ConflictError                 exit 1   HTTP 409  invalid_request_error
├── PayloadTooLargeError          exit 2   HTTP 413  invalid_request_error
├── UnsupportedMediaTypeError     exit 2   HTTP 415  invalid_request_error
├── RateLimitError                exit 1   HTTP 429  rate_limit_error
├── ServiceUnavailableError       exit 1   HTTP 503  service_unavailable_error
├── GatewayTimeoutError           exit 1   HTTP 504  timeout_error
├── StorageError                  exit 1   HTTP 502  storage_error
├── ClusterError                  exit 1   HTTP 503  cluster_error
│   ├── ClusterNotRunningError
│   └── PortInUseError
└── JobError                      exit 1   HTTP 500  job_error
```

The CLI prints ``str(error)`` as one line (a traceback only with ``RAYLANE_DEBUG=1``); HTTP
handlers render :meth:`RaylaneError.to_openai` as the body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RaylaneError(Exception):
    """Base of every error raylane raises on purpose.

    Example:
        >>> RaylaneError("boom").to_openai()["error"]["type"]
        'server_error'
    """

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(RaylaneError):
    """A config file, flag or environment variable is missing or invalid."""

    exit_code = 2
    http_status = 400
    error_type = "invalid_request_error"


class InvalidRequestError(RaylaneError):
    """A request (HTTP body, CLI argument) is well-formed but not acceptable."""

    exit_code = 2
    http_status = 400
    error_type = "invalid_request_error"


class AuthenticationError(RaylaneError):
    """No API key, or a key that does not exist or was revoked."""

    http_status = 401
    error_type = "authentication_error"


class PermissionDeniedError(RaylaneError):
    """The caller is known but may not do this."""

    http_status = 403
    error_type = "permission_error"


class NotFoundError(RaylaneError):
    """The named object (dataset, model, job, file, batch) does not exist."""

    http_status = 404
    error_type = "not_found_error"


class ConflictError(RaylaneError):
    """The request conflicts with the current state (a file a running batch reads)."""

    exit_code = 1
    http_status = 409
    error_type = "invalid_request_error"


class PayloadTooLargeError(RaylaneError):
    """A request body or upload is larger than the configured limit."""

    exit_code = 2
    http_status = 413
    error_type = "invalid_request_error"


class MethodNotAllowedError(RaylaneError):
    """A route asked with a method it does not take."""

    exit_code = 2
    http_status = 405
    error_type = "invalid_request_error"


class UnsupportedMediaTypeError(RaylaneError):
    """A request body in a format the route does not take (JSON routes take ``application/json``)."""

    exit_code = 2
    http_status = 415
    error_type = "invalid_request_error"


class RateLimitError(RaylaneError):
    """Over a requests- or tokens-per-minute limit; ``retry_after`` says when to come back."""

    http_status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float, code: str | None = "rate_limit_exceeded") -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailableError(RaylaneError):
    """Something the request needs is down for now (the metadata DB, a model's replicas); retry later."""

    http_status = 503
    error_type = "service_unavailable_error"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class GatewayTimeoutError(RaylaneError):
    """A request ran past its end-to-end deadline (``serve.request_timeout_s``)."""

    http_status = 504
    error_type = "timeout_error"


class StorageError(RaylaneError):
    """Storage (local folder or S3) refused or failed an operation."""

    http_status = 502
    error_type = "storage_error"


class ClusterError(RaylaneError):
    """The Ray cluster could not be started, reached or stopped."""

    http_status = 503
    error_type = "cluster_error"


class ClusterNotRunningError(ClusterError):
    """No cluster answers at the configured address."""


class PortInUseError(ClusterError):
    """A port the local head needs is already taken."""


class JobError(RaylaneError):
    """A Ray job failed, or could not be submitted or found."""

    error_type = "job_error"
