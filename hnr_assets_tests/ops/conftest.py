"""Test outcome on the item, so that fixtures can tell a failed test (browser screenshots on failure)."""

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
