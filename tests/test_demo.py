"""The README's first command: `annunciator demo` texts Maria through the built-in Twilio emulator
and her typed reply (her PIN) acknowledges the alarm."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

from annunciator.testing.gateway import free_port


def test_demo_texts_maria_and_her_pin_reply_acknowledges(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TWILIO_ACCOUNT_SID", None)
    proc = subprocess.Popen([sys.executable, "-m", "annunciator", "demo", "--data-dir", str(tmp_path / "data"),
                             "--port", str(free_port())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []

    def expect(text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not printed; output:\n{''.join(seen)}")

    try:
        expect("SMS to Maria Lopez (+15550100001)")
        expect("Reply with your PIN to acknowledge [#1]")
        proc.stdin.write("1234\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        expect("Acknowledged #1 Plant/Pump 1.")
    finally:
        proc.terminate()
        proc.wait(15)
