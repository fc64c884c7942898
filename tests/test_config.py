"""Configuration from the environment: defaults, parsing, and refusals at start-up."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cds_service.config import Config, ConfigError, Settings, environment_variables


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


# --------------------------------------------------------------------------- strict parsing (pydantic-settings)

INTEGER_SETTINGS = ["CDS_PORT", "CDS_WORKERS", "CDS_THREADS", "CDS_JWT_LEEWAY_SECONDS", "CDS_MAX_BODY_BYTES",
                    "CDS_FHIR_MAX_PAGES", "CDS_FHIR_MAX_RESPONSE_BYTES", "CDS_FHIR_MAX_CALL_BYTES",
                    "CDS_MAX_RESOURCES_PER_KEY", "CDS_JWT_MAX_LIFETIME_SECONDS", "CDS_RATE_LIMIT_PER_MINUTE",
                    "CDS_RETENTION_DAYS"]


@pytest.mark.parametrize("name", INTEGER_SETTINGS)
@pytest.mark.parametrize("value", ["2.9", "8080.9", "1e3", "two", "8080x", "8 080", "1_000", "0x10", "٣", "2.0"])
def test_integer_settings_refuse_anything_but_digits(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


@pytest.mark.parametrize(("name", "value", "attribute", "expected"), [
    ("CDS_WORKERS", " 3 ", "workers", 3),
    ("CDS_PORT", "+9090", "port", 9090),
    ("CDS_RETENTION_DAYS", "0", "retention_days", 0),
    ("CDS_FHIR_BUDGET_SECONDS", "2.5", "fhir_budget_seconds", 2.5),
    ("CDS_FHIR_BUDGET_SECONDS", "4", "fhir_budget_seconds", 4.0),
    ("CDS_HEADER_TIMEOUT_SECONDS", "5e0", "header_timeout_seconds", 5.0),
])
def test_well_formed_numbers_are_read(name: str, value: str, attribute: str, expected: float) -> None:
    assert getattr(Config.from_env({name: value}), attribute) == expected


@pytest.mark.parametrize(("name", "value"), [
    ("CDS_WORKERS", "0"), ("CDS_PORT", "-1"), ("CDS_RETENTION_DAYS", "-1"),
    ("CDS_FHIR_BUDGET_SECONDS", "0"), ("CDS_FHIR_BUDGET_SECONDS", "nan"), ("CDS_FHIR_BUDGET_SECONDS", "inf"),
    ("CDS_FHIR_BUDGET_SECONDS", "fast"), ("CDS_BODY_TIMEOUT_SECONDS", "1,5"),
])
def test_out_of_range_or_malformed_numbers_refuse_to_start(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True), (" Yes ", True),
    ("false", False), ("0", False), ("no", False), ("off", False), ("", False),
])
@pytest.mark.parametrize(("name", "attribute"), [
    ("CDS_METRICS", "metrics"), ("CDS_ALLOW_UNAUTHENTICATED", "allow_unauthenticated"),
    ("CDS_BENCHMARK_FLOOR", "benchmark_floor"),
])
def test_booleans(name: str, attribute: str, value: str, expected: bool) -> None:
    assert getattr(Config.from_env({name: value}), attribute) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "t", "enabled"])
def test_bad_booleans_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="CDS_METRICS"):
        Config.from_env({"CDS_METRICS": value})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CDS_TRUSTED_ISSUERS", "{not json", "CDS_TRUSTED_ISSUERS: is not JSON"),
    ("CDS_TRUSTED_ISSUERS", '["https://ehr.example"]', "CDS_TRUSTED_ISSUERS: must be a JSON object"),
    ("CDS_PLAN_PREFIXES", "MCD-=medicaid", "CDS_PLAN_PREFIXES: is not JSON"),
    ("CDS_PLAN_PREFIXES", '"MCD-"', "CDS_PLAN_PREFIXES: must be a JSON object"),
])
def test_json_objects_have_clear_errors(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({name: value})


def test_blank_variables_take_the_default() -> None:
    config = Config.from_env({"CDS_PORT": "", "CDS_WORKERS": "  ", "CDS_TRUSTED_ISSUERS": " ", "CDS_HOST": ""})
    assert (config.port, config.workers, config.host, dict(config.trusted_issuers)) == (8080, 2, "127.0.0.1", {})


def test_lists_strings_and_normalisation() -> None:
    config = Config.from_env({
        "CDS_FHIR_SERVERS": " https://a.example/fhir ,, https://b.example/fhir,",
        "CDS_CORS_ORIGINS": ",",
        "CDS_WORKER_CLASS": " SYNC ",
        "CDS_LOG_LEVEL": "debug",
        "CDS_HTTP_PROXY": " http://proxy.internal:3128 ",
        "CDS_PLAN_PREFIXES": '{"X-": "him"}',
        "CDS_METRICS_TOKEN": "s3cret",
    })
    assert config.fhir_servers == ("https://a.example/fhir", "https://b.example/fhir")
    assert config.cors_origins is None
    assert (config.worker_class, config.log_level, config.http_proxy) == ("sync", "DEBUG", "http://proxy.internal:3128")
    assert config.plan_prefixes == {"X-": "him"}
    assert config.metrics_token == "s3cret" and "s3cret" not in repr(config)


def test_variable_names_are_case_sensitive() -> None:
    assert Config.from_env({"cds_port": "9090", "Cds_Workers": "x"}).port == 8080


@pytest.mark.parametrize(("env", "overrides", "expected"), [
    ({}, {}, (8080, 2, "127.0.0.1")),
    ({"CDS_PORT": "9090", "CDS_WORKERS": "5"}, {}, (9090, 5, "127.0.0.1")),
    ({"CDS_PORT": "9090", "CDS_WORKERS": "5"}, {"port": 7000}, (7000, 5, "127.0.0.1")),
    ({"CDS_PORT": "9090", "CDS_HOST": "0.0.0.0"}, {"port": None, "host": "127.0.0.2", "workers": None},
     (9090, 2, "127.0.0.2")),
    ({"CDS_PORT": "not a port"}, {"port": 7000}, (7000, 2, "127.0.0.1")),  # the flag replaces the variable
])
def test_overrides_win_over_the_environment(env: dict[str, str], overrides: dict[str, object],
                                            expected: tuple[int, int, str]) -> None:
    config = Config.from_env(env, **overrides)
    assert (config.port, config.workers, config.host) == expected


def test_overrides_are_checked_like_the_environment() -> None:
    with pytest.raises(ConfigError, match="CDS_WORKERS"):
        Config.from_env({}, workers=0)
    with pytest.raises(ConfigError, match="CDS_PORT"):
        Config.from_env({}, port=70000)
    assert Config.from_env({}, jwks_timeout_seconds=0.5).jwks_timeout_seconds == 0.5  # no variable: passed through


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_THREADS", "7")
    assert Config.from_env().threads == 7
    monkeypatch.setenv("CDS_THREADS", "7.5")
    with pytest.raises(ConfigError, match="CDS_THREADS"):
        Config.from_env()


def test_config_is_still_built_directly_by_field_name() -> None:
    config = Config(database_url="sqlite:///x.db", trusted_issuers={"https://ehr.example": {"keys": []}}, port=1)
    assert (config.database_url, config.port, config.workers) == ("sqlite:///x.db", 1, 2)


def test_settings_and_config_agree() -> None:
    """Every setting is a Config attribute, and the Settings defaults are Config's."""
    config_fields = {f.name: f for f in dataclasses.fields(Config)}
    defaults = Settings.from_environ({}).model_dump()
    for name, value in defaults.items():
        assert name in config_fields
        if name != "database_url":  # derived from XDG_DATA_HOME / HOME of the same environment
            assert value == getattr(Config(), name), name


def _readme_variables() -> set[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE))


def test_every_documented_variable_is_read_and_every_read_variable_is_documented() -> None:
    documented = _readme_variables()
    read = set(environment_variables().values())
    assert len(documented) >= 30
    assert documented == read, {"undocumented": read - documented, "not read": documented - read}
