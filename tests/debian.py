"""Installing a Debian package the tests need, when it is missing and the tests run as root
(as in CI): apt waits for a lock another apt holds instead of failing at once."""

from __future__ import annotations

import os
import shutil
import subprocess

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}


class PackageUnavailable(Exception):
    """The package is missing and cannot be installed here; the message says what to do."""


def apt_install(package: str, executable: str) -> None:
    """Install `package` with apt-get, which must provide `executable`.

    Raises PackageUnavailable when that is impossible here (not root, no apt), and
    subprocess.CalledProcessError when apt itself fails.
    """
    if os.geteuid() != 0:
        raise PackageUnavailable(
            f"{executable} is not installed and installing it needs root: "
            f"run `apt-get install {package}` as root (or run the tests as root)"
        )
    if shutil.which("apt-get") is None:
        raise PackageUnavailable(f"{executable} is not installed and there is no apt-get here")
    env = {**os.environ, **_APT_ENV}
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    subprocess.run(["apt-get", *lock_wait, "update"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", *lock_wait, "install", "-y", "--no-install-recommends", package],
        check=True,
        env=env,
        timeout=1200,
    )
    if not os.access(executable, os.X_OK):
        raise PackageUnavailable(f"apt-get installed {package}, but {executable} is not there")
