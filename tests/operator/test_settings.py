"""Unit tests of operator settings read from the environment."""

from __future__ import annotations

import re

import pytest
from lorafleet_operator.settings import Settings, SettingsError, settings_from_env


def test_defaults_and_env_values():
    assert settings_from_env({}) == Settings()
    s = settings_from_env(
        {
            "LORAFLEET_INSTALLER_IMAGE": "reg/img:1",
            "LORAFLEET_JOB_BACKOFF_LIMIT": "5",
            "LORAFLEET_READY_TIMEOUT_S": "2.5",
            "LORAFLEET_NAMESPACES": "a, b,",
            "LORAFLEET_HF_ENDPOINT": "",
        }
    )
    assert s.installer_image == "reg/img:1"
    assert s.ray_image == "reg/img:1"
    assert s.job_backoff_limit == 5
    assert s.ready_timeout_s == 2.5
    assert s.namespaces == ("a", "b")
    assert s.hf_endpoint is None
    assert s.with_overrides(job_ttl_s=7, hf_endpoint=None).job_ttl_s == 7


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LORAFLEET_JOB_BACKOFF_LIMIT", "two"),
        ("LORAFLEET_JOB_TTL_S", "-1"),
        ("LORAFLEET_LOG_FORMAT", "xml"),
        ("LORAFLEET_IMAGE_PULL_POLICY", "Sometimes"),
    ],
)
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        settings_from_env({var: value})


def test_gpu_name_pull_secrets_and_installer_resources_from_env():
    defaults = settings_from_env({})
    assert defaults.gpu_resource_name == "nvidia.com/gpu"
    assert defaults.image_pull_secrets == ()
    assert defaults.installer_resources == {}
    s = settings_from_env(
        {
            "LORAFLEET_GPU_RESOURCE_NAME": "amd.com/gpu",
            "LORAFLEET_IMAGE_PULL_SECRETS": " regcred, mirror.cred ,",
            "LORAFLEET_INSTALLER_RESOURCES": (
                '{"requests": {"cpu": "500m", "memory": 2147483648},'
                ' "limits": {"memory": "4Gi", "ephemeral-storage": "20Gi"}}'
            ),
        }
    )
    assert s.gpu_resource_name == "amd.com/gpu"
    assert s.image_pull_secrets == ("regcred", "mirror.cred")
    assert s.installer_resources == {
        "requests": {"cpu": "500m", "memory": "2147483648"},
        "limits": {"memory": "4Gi", "ephemeral-storage": "20Gi"},
    }


@pytest.mark.parametrize(
    ("var", "value", "detail"),
    [
        ("LORAFLEET_GPU_RESOURCE_NAME", "nvidia.com/gpu/x", "resource name"),
        ("LORAFLEET_GPU_RESOURCE_NAME", "-gpu", "resource name"),
        ("LORAFLEET_IMAGE_PULL_SECRETS", "regcred,Bad_Name", "'Bad_Name'"),
        ("LORAFLEET_INSTALLER_RESOURCES", "{requests: cpu}", "not valid JSON"),
        ("LORAFLEET_INSTALLER_RESOURCES", '["cpu"]', "JSON object"),
        ("LORAFLEET_INSTALLER_RESOURCES", '{"request": {"cpu": "1"}}', "'request'"),
        ("LORAFLEET_INSTALLER_RESOURCES", '{"limits": "1Gi"}', "limits must be an object"),
        ("LORAFLEET_INSTALLER_RESOURCES", '{"limits": {"memory": "4GB"}}', "limits.memory"),
        ("LORAFLEET_INSTALLER_RESOURCES", '{"requests": {"cpu": true}}', "requests.cpu"),
        ("LORAFLEET_INSTALLER_RESOURCES", '{"requests": {"a b": "1"}}', "'a b'"),
    ],
)
def test_bad_new_settings_name_the_variable_and_the_fault(var, value, detail):
    with pytest.raises(SettingsError, match=var) as info:
        settings_from_env({var: value})
    assert detail in str(info.value)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LORAFLEET_RUN_AS_USER": "0"}, "LORAFLEET_RUN_AS_USER='0': must be 1..2147483647"),
        ({"LORAFLEET_SERVE_PORT": "70000"}, "LORAFLEET_SERVE_PORT='70000': must be 1..65535"),
        ({"LORAFLEET_POLL_INTERVAL_S": "nan"}, "must be a finite number"),
        ({"LORAFLEET_POLL_INTERVAL_S": "0"}, "must be above 0"),
        ({"LORAFLEET_JOB_DEADLINE_S": "0"}, "LORAFLEET_JOB_DEADLINE_S='0': must be at least 1"),
        ({"LORAFLEET_METRICS_PORT": "8080"}, "both 8080"),
        ({"LORAFLEET_NETWORK_POLICY": "yes"}, "LORAFLEET_NETWORK_POLICY='yes': must be true or"),
    ],
)
def test_values_that_would_make_invalid_objects_or_a_busy_loop_are_refused(env, says):
    with pytest.raises(SettingsError, match=re.escape(says)):
        settings_from_env(env)


def test_serving_probe_url_template() -> None:
    from lorafleet_operator.rayservice import probe_endpoint
    from lorafleet_operator.settings import SettingsError, settings_from_env

    settings = settings_from_env({"LORAFLEET_SERVING_PROBE_URL": "http://127.0.0.1:8001/{service}"})
    assert probe_endpoint("m", "ns", settings) == "http://127.0.0.1:8001/m-serve-svc"
    assert probe_endpoint("m", "ns", settings_from_env({})) == "http://m-serve-svc.ns.svc:8000"
    for bad, said in (
        ("http://{host}", "only {service}"),
        ("127.0.0.1:{port}", "http://"),
        ("http://admin:s3cr3t@127.0.0.1:{port}", "credentials"),
        ("http://127.0.0.1/?token=x&s={service}", "query"),
        ("http://127.0.0.1/{service.__class__}", "only {service}"),
        ("http://127.0.0.1/{port:>20}", "only {service}"),
        ("http://127.0.0.1/a b", "whitespace"),
        ("http://", "with a host"),
    ):
        with pytest.raises(SettingsError, match=re.escape(said)):
            settings_from_env({"LORAFLEET_SERVING_PROBE_URL": bad})


@pytest.mark.parametrize(
    ("var", "raw", "said"),
    [
        ("LORAFLEET_METRICS_SCRAPER_NAMESPACE", "a b", "namespace name"),
        ("LORAFLEET_METRICS_SCRAPER_NAMESPACE", "monitoring/x", "namespace name"),
        ("LORAFLEET_METRICS_SCRAPER_NAMESPACE", "m" * 64, "namespace name"),
        ("LORAFLEET_SERVING_STATUS_INTERVAL_S", "1e-9", "at least 1"),
        ("LORAFLEET_SERVING_STATUS_IDLE_S", "0.5", "at least 1"),
        ("LORAFLEET_SLOW_LOAD_S", "0", "a threshold in seconds"),
    ],
)
def test_monitoring_settings_are_checked(var: str, raw: str, said: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(var)) as err:
        settings_from_env({var: raw})
    assert said in str(err.value)
    assert settings_from_env({"LORAFLEET_METRICS_SCRAPER_NAMESPACE": "monitoring"})
