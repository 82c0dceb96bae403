"""A PostgreSQL server of a test's (or a benchmark's) own: initdb + pg_ctl on a free port in a
temporary directory, so it can be stopped, frozen or restarted without touching the machine's
shared server. Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .gateway import free_port


class PostgresMissing(Exception):
    """The server binaries (or a user to run them as) are not there: the caller skips."""


class PrivateCluster:
    """A PostgreSQL cluster of this test's own (initdb + pg_ctl on a free port in a temp dir), so
    the test can stop it; never the machine's shared server. As root it runs as ``postgres``."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = bins[-1] if bins else (Path(p) if (p := shutil.which("initdb")) else None)
        if initdb is None:
            raise PostgresMissing("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                                  "apt-get install postgresql to run the tests that stop a database")
        self.bin = initdb.parent
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing("running as root without a postgres user to run a private cluster as")
            if not shutil.which("runuser"):
                raise PostgresMissing("running as root without runuser to start a private cluster as postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="annunciator-pg-"))
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        r = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} failed: {r.stdout}\n{r.stderr}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def restart(self) -> None:
        """Stop like a crash, then start again on the same port and data."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Like a crash: no shutdown handshake; connections are refused from then on."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...): the processes we started."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = [master]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                        pids.append(int(entry.name))
        return pids

    def freeze(self) -> None:
        """A server that does not answer (a hung host, a lost network): connections are accepted
        by the kernel and queries sent, but nothing comes back."""
        self._frozen = self._processes()
        for pid in self._frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in getattr(self, "_frozen", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def remove(self) -> None:
        self.thaw()
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
