"""Stoplight Prism in proxy mode in front of the Twilio emulator: the contract check.

Why: the emulator is only as good as its claim to answer like Twilio, and the SMS/voice profiles
are only correct if what they send is what Twilio accepts. Prism validates both directions against
Twilio's own OpenAPI description (``twilio_api_v2010.json`` from twilio/twilio-oai, MIT) while
forwarding to the emulator; with ``--errors`` a violation becomes a 422 (request) or 500 (response)
that :mod:`annunciator.testing.twilio.client` turns into a ContractViolation naming it, and every
violation Prism logs is collected here so a fixture can fail the test even when the code under
test swallowed the error.

Where things come from:

* Prism: ``$ANNUNCIATOR_PRISM``, else ``node_modules/.bin/prism`` under the repository (``.ci/run``
  installs it into ``.ci/node``), else ``prism`` on PATH.
* The spec: ``$ANNUNCIATOR_TWILIO_OAI``, else the copy vendored in ``annunciator/testing/twilio_oai``
  (gzipped, with its LICENSE; CI runs from a clean checkout whose parent has no ``shared/``), else
  ``../shared/twilio-oai/twilio_api_v2010.json`` next to the repository.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["CONTRACT_ENV", "PrismNotFound", "PrismProxy", "contract_enabled", "find_prism", "spec_path"]

CONTRACT_ENV = "ANNUNCIATOR_TWILIO_CONTRACT"
PRISM_ENV = "ANNUNCIATOR_PRISM"
SPEC_ENV = "ANNUNCIATOR_TWILIO_OAI"
REPO_ROOT = Path(__file__).resolve().parents[2]
VENDORED_SPEC = Path(__file__).resolve().parent / "twilio_oai" / "twilio_api_v2010.json.gz"
SHARED_SPEC = REPO_ROOT.parent / "shared" / "twilio-oai" / "twilio_api_v2010.json"

# Prism parses a 1.9 MB spec and compiles every path before listening: ~3 s here, more on a slow
# CI machine. Bounded so a broken install fails the run instead of hanging it.
_START_TIMEOUT = 90.0
_STOP_TIMEOUT = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KEEP_LINES = 2000


class PrismNotFound(RuntimeError):
    """No Prism binary: install it with ``npm install --prefix .ci/node @stoplight/prism-cli@5``."""


def contract_enabled() -> bool:
    """True when ``ANNUNCIATOR_TWILIO_CONTRACT`` asks for the Prism pass."""
    return os.environ.get(CONTRACT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def find_prism() -> str:
    """Path of the Prism executable; PrismNotFound saying how to install it otherwise."""
    env = os.environ.get(PRISM_ENV)
    if env:
        if not Path(env).is_file():
            raise PrismNotFound(f"{PRISM_ENV}={env} does not exist")
        return env
    for candidate in (REPO_ROOT / ".ci" / "node" / "node_modules" / ".bin" / "prism",
                      REPO_ROOT / "node_modules" / ".bin" / "prism"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("prism")
    if found:
        return found
    raise PrismNotFound("Stoplight Prism not found: set ANNUNCIATOR_PRISM, or run "
                        "`npm install --no-audit --no-fund --prefix .ci/node @stoplight/prism-cli@5`")


def spec_path() -> Path:
    """The Twilio OpenAPI file Prism should load, with :data:`ERRATA` applied (a file in the temp dir).

    Source order: ``$ANNUNCIATOR_TWILIO_OAI``, the vendored copy, ``../shared/twilio-oai``.
    """
    env = os.environ.get(SPEC_ENV)
    if env:
        data = Path(env).read_bytes()
    elif VENDORED_SPEC.is_file():
        data = gzip.decompress(VENDORED_SPEC.read_bytes())
    elif SHARED_SPEC.is_file():
        data = SHARED_SPEC.read_bytes()
    else:
        raise FileNotFoundError(f"no Twilio OpenAPI spec: set {SPEC_ENV}, or restore {VENDORED_SPEC}")
    digest = hashlib.sha256(data + ERRATA_VERSION.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"annunciator-twilio-oai-{digest}.json"
    if not target.is_file():
        spec = json.loads(data)
        apply_errata(spec)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(spec), encoding="utf-8")
        os.replace(tmp, target)  # atomic: parallel test workers never see half a file
    return target


# Where Twilio's OpenAPI description contradicts Twilio's API (and its own examples), the spec is
# corrected before Prism loads it. Each entry says why; keep the list short and honest.
ERRATA = (
    "List responses: `uri`, `first_page_uri`, `next_page_uri` and `previous_page_uri` are declared "
    "`format: uri` (absolute), but Twilio returns paths such as `/2010-04-01/Accounts/AC…/Messages.json"
    "?PageSize=50&Page=0` (the spec's own examples do too), and twilio-python joins them to its base URL. "
    "The format is relaxed to `uri-reference`.",
    "Form bodies with array properties (`StatusCallbackEvent`, `MediaUrl`, ...): Twilio takes repeated keys "
    "(`StatusCallbackEvent=initiated&StatusCallbackEvent=ringing`), which is OpenAPI's default encoding for "
    "form bodies (style form, explode true), but Prism 5 reads repeated keys as one string unless that "
    "encoding is spelled out. It is spelled out; the meaning is unchanged.",
)
ERRATA_VERSION = "2"
_PAGE_FIELDS = ("uri", "first_page_uri", "next_page_uri", "previous_page_uri")


def apply_errata(spec: dict[str, Any]) -> int:
    """Apply :data:`ERRATA` to a loaded spec in place; return how many schema fields changed."""
    changed = 0
    for item in spec.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            form = op.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded")
            if form:
                arrays = [k for k, v in form.get("schema", {}).get("properties", {}).items()
                          if v.get("type") == "array"]
                for name in arrays:
                    form.setdefault("encoding", {}).setdefault(name, {"style": "form", "explode": True})
                    changed += 1
            for response in op.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    props = media.get("schema", {}).get("properties", {})
                    if "first_page_uri" not in props:
                        continue
                    for name in _PAGE_FIELDS:
                        field = props.get(name)
                        if isinstance(field, dict) and field.get("format") == "uri":
                            field["format"] = "uri-reference"
                            changed += 1
    return changed


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PrismProxy:
    """``prism proxy <spec> <upstream> --errors`` on 127.0.0.1, as a context manager.

    ``violations`` collects every error Prism logs (request or response not matching the spec);
    ``warnings`` the rest (e.g. an error status the spec does not list, which is expected for
    Twilio's 4xx answers: the OpenAPI file documents success responses only).
    """

    def __init__(self, upstream: str, *, spec: Path | str | None = None, binary: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, start_timeout: float = _START_TIMEOUT) -> None:
        self.upstream = upstream
        self.spec = Path(spec) if spec else None
        self.binary = binary
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None
        self.log: deque[str] = deque(maxlen=_KEEP_LINES)
        self._violations: list[str] = []
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._listening = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> PrismProxy:
        binary = self.binary or find_prism()
        spec = self.spec or spec_path()
        self.port = self.port or _free_port(self.host)
        cmd = [binary, "proxy", str(spec), self.upstream, "--errors", "--host", self.host, "--port", str(self.port)]
        began = time.monotonic()
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      encoding="utf-8", errors="replace", stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, name="prism-log", daemon=True)
        self._reader.start()
        try:
            self._wait_listening(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_listening(self, began: float) -> None:
        deadline = began + self.start_timeout
        while not self._listening.wait(0.1):
            assert self._proc is not None
            if self._proc.poll() is not None:
                tail = "\n".join(list(self.log)[-20:])
                raise RuntimeError(f"Prism exited with {self._proc.returncode} before listening:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prism did not listen on {self.url} within {self.start_timeout:g}s")

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = _ANSI.sub("", raw.rstrip("\n"))
            self.log.append(line)
            if "Prism is listening" in line:
                self._listening.set()
            elif "✖" in line:  # Prism's error marker: a request or response broke the spec
                with self._lock:
                    self._violations.append(_short(line))
            elif "⚠" in line and "Violation" in line:
                with self._lock:
                    self.warnings.append(_short(line))

    @property
    def violations(self) -> list[str]:
        """Errors Prism logged so far (a snapshot)."""
        with self._lock:
            return list(self._violations)

    def take_violations(self, settle: float = 0.05) -> list[str]:
        """Return and forget the errors logged so far, after ``settle`` seconds for in-flight log lines."""
        if settle:
            time.sleep(settle)
        with self._lock:
            out, self._violations = self._violations, []
            self.warnings.clear()
        return out

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(_STOP_TIMEOUT)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> PrismProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _short(line: str) -> str:
    """Drop Prism's ``[time] <arrow> [COMPONENT]`` prefix."""
    return re.sub(r"^\[[^\]]*\]\s*\u203a\s*", "", line).strip()
