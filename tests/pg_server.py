"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests, benchmarks and ``.ci/run``.

``initdb`` a cluster in a temporary folder, start it on a free port with ``pg_ctl``,
hand out ``postgresql://`` URLs to fresh databases, and remove everything on stop.
PostgreSQL refuses to run as root, so under root (CI containers) every server command
runs as Debian's unprivileged ``postgres`` user through ``runuser``.

Run as a script it starts a cluster, runs one query and stops it: ``.ci/run`` calls
``python tests/pg_server.py`` to fail early when the server cannot start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SERVER_USER = "postgres"  # Debian's account for the server, used when we are root
# Every role logs in without a password (trust on 127.0.0.1 only), except this one, for the
# tests of where passwords come from (.pgpass, the OS keyring).
PASSWORD_ROLE = "nmid_pw"


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, newest Debian version first, or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One running cluster. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        bin_dir = bin_dir or find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bin_dir = bin_dir
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.user = SERVER_USER if self.as_root else os.environ.get("USER") or "postgres"
        self.tmp = Path(tempfile.mkdtemp(prefix="nmid-pg-"))
        self.data = self.tmp / "data"
        self.port = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PgServer:
        """initdb (trust auth on 127.0.0.1 only) and start on a free port."""
        if self.as_root:
            shutil.chown(self.tmp, SERVER_USER)
        os.chmod(self.tmp, 0o700)
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.strip()[-500:]}") from exc
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self.port = _free_port()
        self._start()
        return self

    def _start(self) -> None:
        # A socket folder inside the cluster: /var/run/postgresql may not exist in CI.
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-o", opts,
                           "-w", "-t", "60", "start", check=False)
        if result.returncode != 0:
            log = (self.data / "server.log").read_text(errors="replace")[-800:] if (self.data / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()} {log}")

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (fast shutdown) and, unless ``remove`` is False, delete the cluster."""
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        if remove:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server, wait ``down_s`` seconds, start it again on the same port."""
        self.stop(remove=False)
        time.sleep(down_s)
        self._start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None, *, owner: str | None = None) -> str:
        """A fresh empty database (owned by ``owner`` if given); returns its URL (as postgres)."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        return self.url(name)

    def password_role(self, password: str) -> str:
        """(Re)create the role that must log in with a password; returns its name."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_ROLE,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(f"{verb} ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'")
        return PASSWORD_ROLE

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """Start a cluster, print the server version, stop it: proves CI can run the PG tests."""
    import psycopg

    with PgServer() as server, psycopg.connect(server.url(), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {row[0] if row else '?'} ran on 127.0.0.1:{server.port} as {server.user}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
