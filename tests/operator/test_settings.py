"""Unit tests of operator settings read from the environment."""

from __future__ import annotations

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
