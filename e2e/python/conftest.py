"""On a failed step of the platform suite, print what explains it: the tails
of the operator's, the gateways' and the mock upstreams' logs, the API
server's log and the Tenantgate objects, instead of a bare timeout."""

import pytest

import e2e_support


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("e2e diagnostics", f"work dir: {e2e_support.WORK}\n{e2e_support.diagnostics()}"))
