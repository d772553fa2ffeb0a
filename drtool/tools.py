"""Finding the programs drtool drives, and saying which Debian package brings a missing one.

On a fresh machine the first failure is often a missing program, or one that
exists but is not on PATH (`runuser` lives in /usr/sbin, which a non-login
shell or a cron job may not have). `find_tool` also looks in the system
directories, and `require` fails with the package to install.
"""

from __future__ import annotations

import glob
import os
import shutil

from drtool.errors import DrtoolError

# Program -> Debian package that installs it.
PACKAGES: dict[str, str] = {
    "runuser": "util-linux",
    "restic": "restic",
    "age": "age",
    "jq": "jq",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "postgres": "postgresql",
    "psql": "postgresql-client",
    "pg_restore": "postgresql-client",
    "createdb": "postgresql-client",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mariadb": "mariadb-client",
    "mariadb-admin": "mariadb-client",
    "sqlite3": "sqlite3",
    "systemctl": "systemd",
    "bash": "bash",
}
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class ToolMissing(DrtoolError):
    """A program drtool needs is not installed (or not where it can be found)."""


def package_for(program: str) -> str:
    return PACKAGES.get(os.path.basename(program), os.path.basename(program))


def install_hint(program: str) -> str:
    return f"install the Debian package {package_for(program)} (apt-get install {package_for(program)})"


def find_tool(program: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """PATH first, then the system directories (and PostgreSQL's versioned bin dirs)."""
    if os.path.isabs(program):
        return program if os.access(program, os.X_OK) else None
    found = shutil.which(program)
    if found:
        return found
    dirs = (*extra_dirs, *SYSTEM_DIRS, *sorted(glob.glob(PG_BIN_GLOB), reverse=True))
    for folder in dirs:
        candidate = os.path.join(folder, program)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


def require(program: str, *, why: str = "", extra_dirs: tuple[str, ...] = ()) -> str:
    found = find_tool(program, extra_dirs)
    if found is None:
        need = f" ({why})" if why else ""
        raise ToolMissing(f"{program} is not installed or not found on PATH nor in {', '.join(SYSTEM_DIRS)}{need}",
                          hint=install_hint(program))
    return found
