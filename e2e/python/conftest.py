"""On a failed step of the platform suite, print what explains it: the tails
of the operator's, the gateways' and the mock upstreams' logs, the API
server's log and the Tenantgate objects, instead of a bare timeout."""

import shutil

import pytest

import e2e_support


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("e2e diagnostics", f"work dir: {e2e_support.WORK}\n{e2e_support.diagnostics()}"))


def pytest_sessionfinish(session, exitstatus):
    """Keeps the run's files (logs, volumes) only when something failed."""
    if exitstatus == 0:
        shutil.rmtree(e2e_support.WORK, ignore_errors=True)
    else:
        print(f"\ne2e files kept in {e2e_support.WORK}")
