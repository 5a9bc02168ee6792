"""External programs some tests need (ssh-keygen, systemd-analyze): skipped on a laptop without them, a
failure in CI (``CI`` set), where .ci/run installs them, so CI can never stay green by not testing a claim.
"""

from __future__ import annotations

import functools
import os
import shutil

import pytest


def needs_tool(program: str, package: str):
    """Decorate a test that runs ``program`` (Debian package ``package``)."""
    message = f"{program} is not installed (apt-get install -y {package}; .ci/run installs it)"

    def decorate(test):
        if shutil.which(program) is not None:
            return test
        if not os.environ.get("CI"):
            return pytest.mark.skip(reason=message)(test)

        @functools.wraps(test)
        def fail(*args, **kwargs):
            pytest.fail(f"{message}: in CI this test must run, not skip")

        return fail

    return decorate
