"""Settings: defaults, every variable parsed, .env read, and one clear error naming every
bad variable without echoing secrets."""

from __future__ import annotations

import pytest

from poel_host.dsn import redact_dsn
from poel_host.errors import SettingsError
from poel_host.settings import DEFAULT_DATABASE_URL, Settings, load_settings

VARIABLES = [str(field.validation_alias) for field in Settings.model_fields.values()]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No inherited variables and no stray .env: each test states its environment."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults():
    s = load_settings()
    assert s.dsn == DEFAULT_DATABASE_URL
    assert s.env == "development"
    assert s.worker_concurrency == 10
    assert s.job_timeout_ms == 300_000
    assert s.health_check_port == 8080
    assert s.schema_name == "poel"
    assert s.plugins_to_load is None
    assert s.plugins_disabled == []
    assert s.queue_names is None
    assert s.log_format == "json"
    assert s.log_level == "info"
    assert s.supabase_url is None
    assert s.supabase_service_role_key is None
    assert s.should_auto_migrate is True


def test_each_variable_is_parsed(monkeypatch):
    values = {
        "DATABASE_URL": "postgresql://app:s3cret@db.example:6543/app",
        "SUPABASE_URL": "https://abc.supabase.co",
        "SUPABASE_SERVICE_ROLE_KEY": "service-role-key",
        "POEL_ENV": "production",
        "WORKER_CONCURRENCY": "25",
        "JOB_TIMEOUT_MS": "1500",
        "HEALTH_CHECK_PORT": "9000",
        "HEALTH_CHECK_HOST": "0.0.0.0",
        "POEL_SCHEMA": "jobs_v2",
        "POEL_LOAD_PLUGINS": "poel-records, poel-auth-cleanup",
        "POEL_DISABLED_PLUGINS": "poel-auth-cleanup",
        "POEL_QUEUES": "default,mail",
        "POEL_LOG_FORMAT": "console",
        "POEL_LOG_LEVEL": "debug",
        "POEL_POLL_INTERVAL_MS": "250",
        "POEL_LEASE_MS": "5000",
        "POEL_SHUTDOWN_TIMEOUT_MS": "0",
        "POEL_RETRY_BACKOFF_MS": "20",
        "POEL_RETRY_BACKOFF_MAX_MS": "60000",
        "POEL_DB_POOL_SIZE": "3",
        "POEL_CONNECT_TIMEOUT_S": "2",
        "POEL_AUTO_MIGRATE": "true",
        "POEL_MAX_PAYLOAD_BYTES": "4096",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.dsn == "postgresql://app:s3cret@db.example:6543/app"
    assert s.supabase_url == "https://abc.supabase.co"
    assert s.supabase_service_role_key is not None
    assert s.supabase_service_role_key.get_secret_value() == "service-role-key"
    assert s.env == "production"
    assert s.worker_concurrency == 25
    assert s.job_timeout_ms == 1500
    assert s.health_check_port == 9000
    assert s.health_check_host == "0.0.0.0"
    assert s.schema_name == "jobs_v2"
    assert s.plugins_to_load == ["poel-records", "poel-auth-cleanup"]
    assert s.plugins_disabled == ["poel-auth-cleanup"]
    assert s.queue_names == ["default", "mail"]
    assert s.log_format == "console"
    assert s.log_level == "debug"
    assert s.poll_interval_ms == 250
    assert s.lease_ms == 5000
    assert s.shutdown_timeout_ms == 0
    assert s.retry_backoff_ms == 20
    assert s.retry_backoff_max_ms == 60000
    assert s.db_pool_size == 3
    assert s.connect_timeout_s == 2
    assert s.should_auto_migrate is True
    assert s.max_payload_bytes == 4096


def test_empty_load_plugins_means_none(monkeypatch):
    monkeypatch.setenv("POEL_LOAD_PLUGINS", "")
    assert load_settings().plugins_to_load == []


def test_auto_migrate_defaults_off_in_production(monkeypatch):
    monkeypatch.setenv("POEL_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/app")
    assert load_settings().should_auto_migrate is False
    monkeypatch.setenv("POEL_AUTO_MIGRATE", "false")
    monkeypatch.setenv("POEL_ENV", "development")
    assert load_settings().should_auto_migrate is False


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://envfile@127.0.0.1:5432/fromfile\n"
        "WORKER_CONCURRENCY=7\n"
        "POEL_ENV=production\n",
        encoding="utf-8",
    )
    s = load_settings()
    assert s.dsn == "postgresql://envfile@127.0.0.1:5432/fromfile"
    assert s.worker_concurrency == 7
    assert s.env == "production"


def test_environment_wins_over_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("WORKER_CONCURRENCY=7\n", encoding="utf-8")
    monkeypatch.setenv("WORKER_CONCURRENCY", "3")
    assert load_settings().worker_concurrency == 3


def test_every_bad_variable_named_once_without_secrets(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://admin:hunter2@db.example/app")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sr-key-topsecret")
    monkeypatch.setenv("SUPABASE_URL", "ftp://nope")
    monkeypatch.setenv("WORKER_CONCURRENCY", "many")
    monkeypatch.setenv("JOB_TIMEOUT_MS", "0")
    monkeypatch.setenv("HEALTH_CHECK_PORT", "70000")
    monkeypatch.setenv("POEL_ENV", "staging")
    monkeypatch.setenv("POEL_LOG_FORMAT", "xml")
    monkeypatch.setenv("POEL_AUTO_MIGRATE", "maybe")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    for name in (
        "DATABASE_URL",
        "SUPABASE_URL",
        "WORKER_CONCURRENCY",
        "JOB_TIMEOUT_MS",
        "HEALTH_CHECK_PORT",
        "POEL_ENV",
        "POEL_LOG_FORMAT",
        "POEL_AUTO_MIGRATE",
    ):
        assert f"{name}:" in message, name
    assert "hunter2" not in message
    assert "topsecret" not in message
    assert "'many'" in message  # non-secret values are shown to help the operator
    assert info.value.exit_code == 2
    assert "Traceback" not in message


def test_secret_values_never_in_validation_messages(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "user=app password=hunter2 host=db.example")
    monkeypatch.setenv("WORKER_CONCURRENCY", "-1")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "WORKER_CONCURRENCY" in str(info.value)
    assert "DATABASE_URL" not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_public_settings_mask_secrets(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@db.example/app")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sr-key-topsecret")
    s = load_settings()
    public = s.public()
    text = repr(public) + repr(s) + str(s)
    assert "hunter2" not in text
    assert "topsecret" not in text
    assert public["database_url"] == "postgresql://app:********@db.example/app"
    assert public["supabase_service_role_key"] == "********"


def test_production_requires_database_url(monkeypatch):
    monkeypatch.setenv("POEL_ENV", "production")
    with pytest.raises(SettingsError, match="DATABASE_URL: must be set when POEL_ENV=production"):
        load_settings()


def test_production_database_url_from_dotenv_counts(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://db.example/app\n", encoding="utf-8")
    monkeypatch.setenv("POEL_ENV", "production")
    assert load_settings().dsn == "postgresql://db.example/app"


def test_production_without_database_url_is_named_beside_other_errors(monkeypatch):
    monkeypatch.setenv("POEL_ENV", "production")
    monkeypatch.setenv("WORKER_CONCURRENCY", "zero")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "WORKER_CONCURRENCY:" in str(info.value)
    assert "DATABASE_URL: must be set when POEL_ENV=production" in str(info.value)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:hunter2@db:5432/app", "postgresql://app:********@db:5432/app"),
        (
            "postgres://app:p%40ss@db/app?sslmode=require",
            "postgres://app:********@db/app?sslmode=require",
        ),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        (
            "host=db user=app password=hunter2 dbname=app",
            "host=db user=app password=******** dbname=app",
        ),
        ("host=db password = hunter2", "host=db password = ********"),
    ],
)
def test_redact_dsn(dsn, expected):
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize("schema", ["poel-jobs", "1poel", "poel;drop", 'po"el', "a" * 64, ""])
def test_schema_must_be_an_identifier(monkeypatch, schema):
    monkeypatch.setenv("POEL_SCHEMA", schema)
    with pytest.raises(SettingsError, match="POEL_SCHEMA: must be a plain SQL identifier"):
        load_settings()


@pytest.mark.parametrize("schema", ["poel", "_private", "Jobs2", "a" * 63])
def test_schema_identifiers_accepted(monkeypatch, schema):
    monkeypatch.setenv("POEL_SCHEMA", schema)
    assert load_settings().schema_name == schema


def test_overrides_by_variable_name():
    s = Settings(WORKER_CONCURRENCY=2, POEL_SCHEMA="other")
    assert (s.worker_concurrency, s.schema_name) == (2, "other")


# The Deno worker's configuration (issue 17, part 5) ---------------------------------

DENO_DOTENV = """\
DATABASE_URL=postgresql://worker:s3cret@db.example:5432/postgres
SUPABASE_URL=https://abcd.supabase.co
SUPABASE_SERVICE_ROLE_KEY=service-role-key-of-the-seed
DENO_ENV=production
WORKER_CONCURRENCY=5
JOB_TIMEOUT_MS=600000
HEALTH_CHECK_PORT=8000
"""


def test_the_deno_workers_dotenv_starts_poel_in_the_same_mode(tmp_path):
    (tmp_path / ".env").write_text(DENO_DOTENV, encoding="utf-8")

    s = load_settings()

    assert (s.env, s.env_from) == ("production", "DENO_ENV")
    assert s.dsn == "postgresql://worker:s3cret@db.example:5432/postgres"
    assert s.supabase_url == "https://abcd.supabase.co"
    assert s.supabase_service_role_key.get_secret_value() == "service-role-key-of-the-seed"
    assert (s.worker_concurrency, s.job_timeout_ms, s.health_check_port) == (5, 600_000, 8000)
    assert s.should_auto_migrate is False  # production: as with POEL_ENV=production
    # a child of the process executor is told the mode in Poel's own words
    assert s.as_environment()["POEL_ENV"] == "production"
    assert "service-role-key-of-the-seed" not in repr(s.public())


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"DENO_ENV": "production"}, ("production", "DENO_ENV")),
        ({"NODE_ENV": "production"}, ("production", "NODE_ENV")),
        ({"NODE_ENV": "Production "}, ("production", "NODE_ENV")),
        # what a Node toolchain sets is not an error: anything but production is development
        ({"NODE_ENV": "test"}, ("development", "NODE_ENV")),
        ({"DENO_ENV": "staging"}, ("development", "DENO_ENV")),
        # DENO_ENV (the seed's) before NODE_ENV, POEL_ENV before both
        ({"DENO_ENV": "development", "NODE_ENV": "production"}, ("development", "DENO_ENV")),
        ({"POEL_ENV": "development", "DENO_ENV": "production"}, ("development", "POEL_ENV")),
        ({"POEL_ENV": "production", "NODE_ENV": "development"}, ("production", "POEL_ENV")),
        ({"DENO_ENV": ""}, ("development", "POEL_ENV")),
    ],
)
def test_deno_env_and_node_env_count_as_poel_env_when_it_is_unset(monkeypatch, variables, expected):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/app")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.env, s.env_from) == expected


def test_production_from_deno_env_requires_database_url_naming_it(monkeypatch):
    monkeypatch.setenv("DENO_ENV", "production")
    with pytest.raises(SettingsError, match="DATABASE_URL: must be set when DENO_ENV=production"):
        load_settings()
    monkeypatch.setenv("POEL_ENV", "development")  # POEL_ENV wins: no database needed
    assert load_settings().env == "development"


@pytest.mark.process
def test_serve_reports_the_mode_deno_env_set(serve):
    handle = serve(DENO_ENV="production", NODE_ENV="development", WORKER_CONCURRENCY=3)

    health = handle.http("/health")

    assert health.status == 200
    assert health.body["environment"] == "production"
    assert handle.find_log("worker started")["environment"] == "production"
