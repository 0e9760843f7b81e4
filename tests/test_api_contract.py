"""The API keeps its contract: Schemathesis generates requests from the OpenAPI document and checks
every answer (no server error, a status and a body the document describes), without a key on a
loopback server and with an engineer's key, against the tiny trained PatchCore.

Bounded (:data:`EXAMPLES` per operation and key setting) so the suite stays short; the generated
cases are derandomised, so a run is repeatable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

pytestmark = pytest.mark.filterwarnings("ignore")

EXAMPLES = 12
#: No server error, and every status, content type, header and body one the document describes.
#: Not "schema-valid data is accepted": the document cannot say that bytes must decode as an image
#: or that a category must exist, so those 422/404 answers are the contract, not a breach of it.
CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.allow_header_conformance,
]
KEY = "contract-test-key-" + "k" * 24


@pytest.fixture(scope="module")
def contract_env(app_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private workspace (history, users) over the session's models and data."""
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(params=["no key (loopback)", "engineer key"])
def served(request, app_home: Path, contract_env: Path, monkeypatch: pytest.MonkeyPatch):
    """The API app as ``core serve`` builds it on loopback, and the headers a client sends to it."""
    from core.api.app import create_api

    home = contract_env / request.param.split()[0]
    monkeypatch.setenv("INSPECT_HOME", str(home))
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(app_home / "models"))
    monkeypatch.setenv("INSPECT_DATA_ROOT", str(app_home / "demo_data"))
    monkeypatch.setenv("INSPECT_RESULTS", str(home / "results.json"))
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(home / "qdrant"))
    if (app_home / "qdrant").is_dir() and not (home / "qdrant").exists():
        shutil.copytree(app_home / "qdrant", home / "qdrant", ignore=shutil.ignore_patterns(".lock"))
    for name in ("INSPECT_MAX_UPLOAD_MB", "INSPECT_API_MAX_BATCH", "INSPECT_MAX_PIXELS", "INSPECT_USERS_FILE", "INSPECT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    headers = {}
    if request.param == "engineer key":
        monkeypatch.setenv("INSPECT_API_KEY", KEY)
        headers = {"Authorization": f"Bearer {KEY}"}
    return create_api(host="127.0.0.1"), headers


def test_every_answer_is_in_the_contract(served) -> None:
    """Per operation, EXAMPLES generated requests; every check of Schemathesis' default set must pass."""
    app, headers = served
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
        def holds(case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        holds()
