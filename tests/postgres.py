"""A real PostgreSQL server for tests: Debian's binaries, a throwaway cluster on 127.0.0.1.

Started once per session by the ``postgres_server`` fixture; each test gets its own database.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user the package created.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} not found: install the Debian package postgresql (.ci/run does)"
        )
    return found


@dataclass
class PostgresServer:
    port: int
    password: str
    data_dir: Path
    run_as: list[str]
    options: str = ""

    @property
    def log(self) -> Path:
        return self.data_dir.parent / "log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://raylane:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def halt(self) -> None:
        """Stop the server (its clients' connections are cut) and keep its data: an outage."""
        subprocess.run([*self.run_as, _bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
                       capture_output=True, timeout=60)  # fmt: skip

    def resume(self) -> None:
        """Start the server again on its data, after :meth:`halt`."""
        subprocess.run(
            [*self.run_as, _bin("pg_ctl"), "start", "-D", str(self.data_dir), "-w", "-t", "60",
             "-l", str(self.log), "-o", self.options],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres(port: int) -> PostgresServer:
    """initdb + pg_ctl start on ``port`` (127.0.0.1 only, password auth, sockets in its own dir)."""
    base = Path(tempfile.mkdtemp(prefix="raylane-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(16)
    pwfile = base / "pw"
    pwfile.write_text(password)
    if run_as:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data = base / "data"
    subprocess.run(
        [*run_as, _bin("initdb"), "-D", str(data), "-U", "raylane", "--pwfile", str(pwfile),
         "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off"
    server = PostgresServer(port=port, password=password, data_dir=data, run_as=run_as, options=options)
    server.resume()
    return server
