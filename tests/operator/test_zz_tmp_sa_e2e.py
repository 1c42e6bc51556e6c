# TEMPORARY (not committed): the operator e2e run as the chart's ServiceAccount.
import contextlib

import pytest

from tests.chart.operator_identity import kubeconfig_in_process, operator_sa_kubeconfig  # noqa: F401
from tests.operator.test_operator_e2e import (  # noqa: F401
    test_end_to_end_adapters_served_added_and_removed,
)


@pytest.fixture
def run_operator(run_operator, operator_sa_kubeconfig):  # noqa: F811
    @contextlib.contextmanager
    def start(**env):
        with kubeconfig_in_process(operator_sa_kubeconfig), run_operator(**env) as runner:
            yield runner

    return start
