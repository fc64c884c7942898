"""Configuration from the environment: defaults, parsing, and refusals at start-up."""

from __future__ import annotations

import pytest

from cds_service.config import Config, ConfigError


def test_embedded_defaults() -> None:
    config = Config.from_env({})
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 8080, 2)
    assert config.database_url.startswith("sqlite:///")
    assert config.max_body_bytes == 5 * 1024 * 1024
    assert config.fhir_budget_seconds == 3.0
    assert not config.auth_enabled
    assert config.plan_prefixes == {"MCD-": "medicaid", "HIM-": "him", "COM-": "commercial"}


def test_environment_and_overrides() -> None:
    env = {
        "CDS_PORT": "9090",
        "CDS_TRUSTED_ISSUERS": '{"https://ehr.example": "https://ehr.example/jwks.json"}',
        "CDS_PUBLIC_BASE_URL": "https://cds.example/",
        "CDS_CORS_ORIGINS": "https://a.example, https://b.example",
        "DATABASE_URL": "postgresql://u:p@127.0.0.1/db",
        "CDS_FHIR_BUDGET_SECONDS": "1.5",
    }
    config = Config.from_env(env, port=7000)
    assert config.port == 7000
    assert config.auth_enabled
    assert config.public_base_url == "https://cds.example"
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert config.fhir_budget_seconds == 1.5


@pytest.mark.parametrize("env", [
    {"CDS_PORT": "eighty"},
    {"CDS_PORT": "70000"},
    {"CDS_FHIR_BUDGET_SECONDS": "-1"},
    {"CDS_TRUSTED_ISSUERS": "not json"},
    {"CDS_TRUSTED_ISSUERS": '["x"]'},
    {"CDS_TRUSTED_ISSUERS": '{"iss": 5}'},
    {"CDS_ALLOW_UNAUTHENTICATED": "maybe"},
    {"CDS_PLAN_PREFIXES": '{"X-": "medicare"}'},
])
def test_bad_settings_refuse_to_start(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Config.from_env(env)
