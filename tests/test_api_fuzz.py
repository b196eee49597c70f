"""Every route of the device's API, driven from its own OpenAPI description with generated requests (valid
and invalid ones: schemathesis strategies run by hypothesis): no request may get a 5xx or an unhandled
exception, and the device keeps answering."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from conftest import Device  # noqa: E402

EXAMPLES = 40  # generated requests per route and generation mode, enough for every field's edge cases


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    device = Device(tmp_path_factory.mktemp("fuzz"))
    device.client.post("/api/classify", json={"sample_id": "F-1"})  # something to find
    yield device
    device.close()


def test_no_generated_request_gets_a_server_error(running):
    schema = schemathesis.openapi.from_url(running.server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /api/classify", "POST /api/export", "GET /api/results/{capture_id}",
                                               "GET /api/images/{name}", "GET /api/samples/{sample_id}"}
    tried = []
    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error])

        try:
            no_server_error()
            tried.append((operation.label, mode.value))
        except Unsatisfiable:  # no invalid request can be made for a route without parameters or body
            assert mode == GenerationMode.NEGATIVE
    assert ("POST /api/classify", "negative") in tried and ("POST /api/export", "negative") in tried
    assert running.client.get("/api/status").status_code == 200
