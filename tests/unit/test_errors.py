"""The exception tree maps to OpenAI error envelopes, HTTP statuses and exit codes."""

from __future__ import annotations

import pytest

from raylane import errors


@pytest.mark.parametrize(
    ("cls", "status", "kind"),
    [
        (errors.ConfigError, 400, "invalid_request_error"),
        (errors.AuthenticationError, 401, "authentication_error"),
        (errors.NotFoundError, 404, "not_found_error"),
        (errors.StorageError, 502, "storage_error"),
        (errors.ClusterNotRunningError, 503, "cluster_error"),
    ],
)
def test_envelope_and_status(cls, status, kind):
    exc = cls("it broke", param="model")
    assert exc.http_status == status
    assert exc.to_openai() == {"error": {"message": "it broke", "type": kind, "param": "model", "code": None}}


def test_rate_limit_carries_retry_after():
    exc = errors.RateLimitError("slow down", retry_after=1.5)
    assert exc.http_status == 429 and exc.retry_after == 1.5
    assert exc.to_openai()["error"]["code"] == "rate_limit_exceeded"


def test_config_errors_exit_2_others_exit_1():
    assert errors.ConfigError("x").exit_code == 2
    assert errors.StorageError("x").exit_code == 1
    assert issubclass(errors.PortInUseError, errors.ClusterError)
