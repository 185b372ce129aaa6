"""The redaction helper masks every password shape that driftline's settings accept."""

import pytest

from driftline.redaction import MASK, redact, redact_url


@pytest.mark.parametrize(
    "text, secret",
    [
        ("http://default:pw1@127.0.0.1:8123/driftline", "pw1"),
        ("https://u:p%40ss@registry.local:8081", "p%40ss"),
        ("postgresql://app:hunter2@db:5432/registry", "hunter2"),
        ("http://127.0.0.1:8123/?database=d&password=topsecret", "topsecret"),
        ("host=db user=app password=hunter2 dbname=registry", "hunter2"),
        ("error: sasl_password=abc123, retrying", "abc123"),
        ("connecting to http://u:a:b@host/x failed", "a:b"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_text_without_secrets_is_unchanged() -> None:
    text = "window credit v1 [0, 2000) written: 1000 events, drifted: income http://host:8123/db"
    assert redact(text) == text
    assert redact_url("http://127.0.0.1:8123/driftline") == "http://127.0.0.1:8123/driftline"
