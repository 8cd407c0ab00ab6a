"""The service's OpenAPI schema fuzzed with schemathesis, in process (ASGI, no network): whatever schemathesis
generates from the schema (and its negative cases), the server never answers 5xx, never shows a traceback, and
every refusal is the platform's JSON error naming the problem. A short run always; ``-m fuzz`` a long one."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from hms_core.config import ServingConfig
from tests.reliability import tally

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# a generous queue: sequential calls never meet a busy slot (the 503 of overload is test_service_load's)
SETTINGS = ServingConfig(max_request_mb=2.0, max_files=3, max_concurrency=2, queue_timeout_s=30.0,
                         log_predictions=False)  # fmt: skip
SHORT_EXAMPLES = 12
LONG_EXAMPLES = 300


@pytest.fixture(scope="module")
def api_schema(quiet_predictor):
    from hms_core.serving.app import create_app

    app = create_app(predictor=quiet_predictor, settings=SETTINGS)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema) -> list:
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in ops} >= {
        ("POST", "/predict"),
        ("POST", "/predict/batch"),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/metadata"),
    }
    return ops


def _check(case) -> None:
    resp = case.call()
    text = resp.text
    clean = resp.status_code < 500 and "Traceback" not in text and 'File "' not in text
    if resp.status_code >= 400:
        err = resp.json().get("error", {})
        clean = clean and set(err) == {"status", "code", "message", "field"} and bool(err["message"])
    tally.add("schemathesis", requests_sent=1, requests_failed=int(not clean))
    assert resp.status_code < 500, f"{case.method} {case.path}: {resp.status_code} {text[:500]}"
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    if resp.status_code >= 400:
        assert clean, f"{case.method} {case.path}: {resp.status_code} not the platform's JSON error: {text[:300]}"


def _fuzz(schema, examples: int, derandomize: bool) -> int:
    """Every operation, positive (schema-valid) and negative (schema-violating) cases; the cases run."""
    ran = 0
    for op in _operations(schema):
        # negative cases need something to violate: the request bodies (the GETs take no input)
        for mode in (
            schemathesis.GenerationMode if op.method.upper() == "POST" else [schemathesis.GenerationMode.POSITIVE]
        ):

            @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                nonlocal ran
                ran += 1
                _check(case)

            run()
    return ran


def test_api_never_answers_5xx_or_a_traceback(api_schema):
    # schemathesis's own pytest plugin reads an attribute pytest 9 removed; its strategies run under hypothesis
    assert _fuzz(api_schema, SHORT_EXAMPLES, derandomize=True) >= 7


@pytest.mark.fuzz
def test_api_never_answers_5xx_or_a_traceback_long(api_schema):
    assert _fuzz(api_schema, LONG_EXAMPLES, derandomize=False) >= 7
