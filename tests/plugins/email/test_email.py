"""The email profile against a real SMTP server (aiosmtpd on 127.0.0.1, STARTTLS with a throwaway
certificate from trustme, AUTH), the ack-link pages over real HTTP, and reply-acks through a real
IMAP server (Dovecot, when installed)."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from annunciator.core.errors import ConfigError
from annunciator.core.loader import load_config
from annunciator.core.plugins import default_manager
from annunciator.plugins.email.tokens import SALT
from annunciator.testing.gateway import free_port

from conftest import raise_alarm, story, wait_until

USER, PASSWORD = "alarms", "s3cret-pw"


class Mailbox:
    """aiosmtpd handler: keeps what arrives; ``rcpt_reply``/``data_reply`` make it refuse."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        with self.lock:
            self.messages.append({
                "tls": session.ssl is not None, "auth": session.authenticated, "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "msg": email.message_from_bytes(envelope.content, policy=email.policy.default)})
        return "250 2.0.0 Message accepted"

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages) >= n:
                return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"expected {n} emails, got {len(self.messages)}")


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA and a certificate for 127.0.0.1; the profile trusts it through ca_file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path, server_ctx


@pytest.fixture
def smtp(tls_ca: tuple[Path, ssl.SSLContext]) -> Any:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), tls_context=tls_ca[1],
                            require_starttls=True, auth_required=True, auth_require_tls=True,
                            authenticator=_auth)
    controller.start()
    mailbox.port = controller.port  # type: ignore[attr-defined]
    yield mailbox
    controller.stop()


def email_profile(smtp: Any, ca: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "email", "host": "127.0.0.1", "port": smtp.port, "security": "starttls", "username": USER,
            "password": PASSWORD, "sender": "alarms@plant.example", "sender_name": "Plant Alarms",
            "ca_file": str(ca), "timeout": "5s", **extra}


@pytest.fixture
def email_gateway(gateway_config: dict[str, Any], start_gateway: Any, smtp: Any, tls_ca: Any) -> Any:
    def start(blocks: list[dict[str, Any]] | None = None, **profile: Any) -> Any:
        gateway_config["profiles"]["mail"] = email_profile(smtp, tls_ca[0], **profile)
        gateway_config["users"]["maria"]["contacts"] = {"email": "maria@plant.example"}
        gateway_config["pipelines"] = {"page": {"blocks": blocks or [
            {"type": "notification", "roster": "operators", "profiles": ["mail"],
             "message": "{name} at {displayPath}"}]}}
        return start_gateway(gateway_config)

    return start


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def links(text: str) -> list[str]:
    return re.findall(r"http://\S+/ack/\S+", text)


def alarm(gw: Any, event_id: str) -> dict[str, Any]:
    return gw.client.get(f"/api/alarms/{event_id}").json()


def acked(gw: Any, event_id: str) -> bool:
    return story(gw, event_id)["event"]["ackTime"] is not None


# --- sending ---------------------------------------------------------------------------------


def test_alarm_email_over_starttls_with_auth(email_gateway, smtp):
    gw = email_gateway()
    event = raise_alarm(gw, "plant/pump1", "page", name="Pump 1 <tripped> & stopped", displayPath="Plant/Pump 1",
                        priority="High", eventValue=42, properties={"area": "<script>alert(1)</script>"})
    [got] = smtp.wait_for(1)
    assert got["tls"] and got["auth"]
    assert got["from"] == "alarms@plant.example" and got["to"] == ["maria@plant.example"]
    msg: EmailMessage = got["msg"]
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == "[High] Plant/Pump 1: Pump 1 <tripped> & stopped"
    assert msg["From"] == "Plant Alarms <alarms@plant.example>"
    assert msg["To"].addresses[0].addr_spec == "maria@plant.example"
    assert msg["Date"] and msg["Message-ID"].endswith("@plant.example>")
    assert msg["References"] == msg["In-Reply-To"] == f"<alarm.{event['id']}@plant.example>"
    assert msg["Auto-Submitted"] == "auto-generated"
    text, html = parts(msg)
    assert "Pump 1 <tripped> & stopped at Plant/Pump 1" in text
    assert "area: <script>alert(1)</script>" in text and "Value:   42" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "Pump 1 &lt;tripped&gt; &amp; stopped" in html
    [link] = links(text)
    assert f'href="{link}"' in html

    stats = wait_until(lambda: gw.client.get("/api/email/stats").json()["users"].get("maria"))
    assert stats["sent"] == 1 and stats["byProfile"]["mail"]["sent"] == 1
    told = story(gw, event["id"])
    [n] = told["notifications"]
    assert (n["profile"], n["status"], n["providerId"]) == ("mail", "sent", msg["Message-ID"])


def test_crlf_in_alarm_text_never_becomes_a_header(email_gateway, smtp):
    gw = email_gateway()
    raise_alarm(gw, "plant/pump2", "page", name="Pump 2\r\n Bcc: x@y", displayPath="Plant\r\nX-Evil: 1")
    [got] = smtp.wait_for(1)
    msg: EmailMessage = got["msg"]
    assert got["to"] == ["maria@plant.example"]  # the envelope: nobody else
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert "Bcc: x@y" in msg["Subject"] and "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert sorted(k.lower() for k in msg) == sorted(
        ["subject", "from", "to", "date", "message-id", "in-reply-to", "references", "auto-submitted",
         "x-auto-response-suppress", "mime-version", "content-type"])
    text, _ = parts(msg)
    assert "Bcc: x@y" in text  # still there for the reader, as text


def test_consolidated_email_for_several_alarms(email_gateway, smtp):
    gw = email_gateway([{"type": "notification", "roster": "operators", "profiles": ["mail"],
                         "message": "{name}", "consolidation": {"delay": "400ms", "frequency": "5s"}}])
    events = [raise_alarm(gw, f"plant/valve{i}", "page", name=f"Valve {i} stuck", displayPath=f"Plant/Valve {i}",
                          priority=p) for i, p in ((1, "Low"), (2, "Critical"), (3, "Medium"))]
    [got] = smtp.wait_for(1)
    time.sleep(0.5)
    assert len(smtp.messages) == 1
    msg = got["msg"]
    assert msg["Subject"] == "3 alarms, highest priority Critical"
    assert msg["References"].split() == [f"<alarm.{e['id']}@plant.example>" for e in events]
    text, html = parts(msg)
    for i in (1, 2, 3):
        assert f"Plant/Valve {i}: Valve {i} stuck" in text and f"Plant/Valve {i}" in html
    assert "Acknowledge all 3:" in text and len(links(text)) == 4
    all_link = links(text.split("Acknowledge all 3:")[1])[0]
    with httpx.Client() as browser:
        page = browser.get(all_link)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert browser.post(all_link, data={"csrf": csrf, "notes": ""}).status_code == 200
    assert all(acked(gw, e["id"]) for e in events)


# --- ack links -----------------------------------------------------------------------------


def _csrf(page: httpx.Response) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert m, page.text
    return m.group(1)


def test_ack_link_get_shows_and_post_acknowledges_once(email_gateway, smtp):
    gw = email_gateway()
    event = raise_alarm(gw, "plant/pump3", "page", name="Pump 3 <hot>", displayPath="Plant/Pump 3")
    [got] = smtp.wait_for(1)
    [link] = links(parts(got["msg"])[0])
    with httpx.Client() as browser:
        page = browser.get(link)
        assert page.status_code == 200 and "Pump 3 &lt;hot&gt;" in page.text and "Acknowledge" in page.text
        assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
        browser.get(link)  # a mail scanner's second look: GET never acknowledges
        assert not acked(gw, event["id"])
        # a POST without the page's token (another site's form) does nothing
        with httpx.Client() as other:
            refused = other.post(link, data={"notes": "x", "csrf": _csrf(page)})
        assert refused.status_code == 403 and "Nothing was acknowledged" in refused.text
        assert browser.post(link, data={"notes": ""}).status_code == 403
        assert not acked(gw, event["id"])

        done = browser.post(link, data={"csrf": _csrf(page), "notes": "on my way"})
        assert done.status_code == 200 and "Acknowledged by" in done.text
        again = browser.post(link, data={"csrf": _csrf(page), "notes": "again"})
        assert again.status_code == 410 and "already been used" in again.text
        assert browser.get(link).status_code == 410

    told = story(gw, event["id"])
    [ack] = [j for j in told["journal"] if j["action"] == "acknowledged"]
    assert (ack["user"], ack["notes"]) == ("maria", "on my way")
    [audit] = [a for a in told["audit"] if a["code"] == "Acknowledged"]
    assert (audit["user"], audit["channel"]) == ("maria", "email")
    assert [a["code"] for a in told["audit"]].count("EmailAckLink") == 1
    assert told["event"]["ackNotes"] == "on my way"
    # the pipeline dropped out on the acknowledgement
    assert all(i["status"] != "running" for i in told["instances"])


def test_forged_expired_and_foreign_tokens_acknowledge_nothing(email_gateway, smtp, gateway_config):
    gw = email_gateway()
    event = raise_alarm(gw, "plant/pump4", "page")
    [got] = smtp.wait_for(1)
    [link] = links(parts(got["msg"])[0])
    base, token = link.rsplit("/", 1)
    secret = Path(gateway_config["gateway"]["secret_file"]).read_bytes().strip()

    class Old(TimestampSigner):  # signs as if 25 hours ago (the default expiry is 24 h)
        def get_timestamp(self) -> int:
            return int((datetime.now(UTC) - timedelta(hours=25)).timestamp())

    claim = {"u": "maria", "e": [event["id"]], "p": "mail", "j": "0123456789abcdef"}
    expired = URLSafeTimedSerializer(secret, salt=SALT, signer=Old).dumps(claim)
    forged = URLSafeTimedSerializer(b"not-the-secret" * 4, salt=SALT).dumps(claim)
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    stranger = URLSafeTimedSerializer(secret, salt=SALT).dumps({**claim, "u": "mallory"})
    with httpx.Client() as browser:
        for bad, status, words in ((expired, 403, "expired"), (forged, 403, "not valid"),
                                   (tampered, 403, "not valid"), (stranger, 403, "not valid"),
                                   ("garbage", 403, "not valid")):
            page = browser.get(f"{base}/{bad}")
            assert (page.status_code, words in page.text) == (status, True), (bad, page.text)
            # even with a CSRF token of a good page, the POST refuses
            good = browser.get(link)
            posted = browser.post(f"{base}/{bad}", data={"csrf": _csrf(good), "notes": "x"})
            assert posted.status_code == status and "Nothing was acknowledged" in posted.text
    assert not acked(gw, event["id"])


def test_notes_required_are_enforced(email_gateway, smtp):
    gw = email_gateway()
    event = raise_alarm(gw, "plant/boiler", "page", name="Boiler pressure", ackNotesRequired=True)
    [got] = smtp.wait_for(1)
    [link] = links(parts(got["msg"])[0])
    with httpx.Client() as browser:
        page = browser.get(link)
        assert "Notes (required)" in page.text and "required>" in page.text
        refused = browser.post(link, data={"csrf": _csrf(page), "notes": "   "})
        assert refused.status_code == 400 and "Notes are required" in refused.text
        assert not acked(gw, event["id"])
        done = browser.post(link, data={"csrf": _csrf(refused), "notes": "valve reset"})
        assert done.status_code == 200
    assert story(gw, event["id"])["event"]["ackNotes"] == "valve reset"


# --- failures and fallback -------------------------------------------------------------------


def test_wrong_password_is_one_clear_error_retried_per_policy(email_gateway, smtp, gateway_config):
    # an administrator may be fixing the password: the only channel keeps trying until max_age
    gateway_config["gateway"]["retry"]["max_age"] = "1500ms"
    gw = email_gateway(password="wrong")
    event = raise_alarm(gw, "plant/pump5", "page")
    told = wait_until(lambda: (s := story(gw, event["id"])) and s["notifications"]
                      and s["notifications"][0]["status"] == "failed" and s)
    [n] = told["notifications"]
    assert n["attempts"] >= 3  # more than gateway.retry.attempts: there is no channel to fall back to
    assert "given up after" in n["lastError"]
    for attempt in n["attemptLog"]:
        assert attempt["error"].startswith(f"SMTP server 127.0.0.1:{smtp.port} refused login as 'alarms': 535")
        assert "Traceback" not in attempt["error"]
    assert smtp.messages == []


def test_5xx_fails_at_once_and_falls_back(gateway_config, email_gateway, smtp, webhook_receiver):
    smtp.rcpt_reply = "550 5.1.1 <maria@plant.example>: mailbox unavailable"
    gateway_config["users"]["maria"]["channels"] = {"policy": "fallback"}
    gw = email_gateway([{"type": "notification", "roster": "operators", "profiles": ["mail", "hook"],
                         "policy": "fallback", "message": "{name}"}])
    event = raise_alarm(gw, "plant/pump6", "page", name="Pump 6 down")
    [hooked] = webhook_receiver.wait_for(1)
    assert hooked.json["message"] == "Pump 6 down"
    told = wait_until(lambda: (s := story(gw, event["id"])) and len(s["notifications"]) == 2
                      and s["notifications"][1]["status"] == "sent" and s)
    mail, hook = told["notifications"]
    assert (mail["profile"], mail["status"], mail["attempts"]) == ("mail", "failed", 1)
    assert "refused recipient maria@plant.example: 550 5.1.1" in mail["lastError"]
    assert (hook["profile"], hook["status"]) == ("hook", "sent")
    whys = [t["why"] for t in told["trace"] if t["action"] == "fallback"]
    assert any("via mail" in w and "550 5.1.1" in w and "trying hook" in w for w in whys), told["trace"]


def test_4xx_is_retried_then_delivered(email_gateway, smtp, gateway_config):
    smtp.data_reply = "451 4.7.1 greylisted, try again later"
    # retries a second apart: the test must clear the greylist before they run out, on a busy machine too
    gateway_config["gateway"]["retry"] = {"attempts": 10, "backoff": "1s", "max_backoff": "1s"}
    gw = email_gateway()
    event = raise_alarm(gw, "plant/pump7", "page")
    wait_until(lambda: story(gw, event["id"])["notifications"][0]["attempts"] >= 1)
    smtp.data_reply = None
    smtp.wait_for(1)
    told = wait_until(lambda: (s := story(gw, event["id"])) and s["notifications"][0]["status"] == "sent" and s)
    log = told["notifications"][0]["attemptLog"]
    assert not log[0]["ok"] and "451 4.7.1 greylisted" in log[0]["error"] and log[-1]["ok"]


def test_server_down_three_attempts_then_fallback(gateway_config, start_gateway, tls_ca, webhook_receiver):
    down = type("Down", (), {"port": free_port()})()  # nothing listens there: connection refused
    gateway_config["profiles"]["mail"] = email_profile(down, tls_ca[0])
    gateway_config["users"]["maria"]["contacts"] = {"email": "maria@plant.example"}
    gateway_config["pipelines"] = {"page": {"blocks": [
        {"type": "notification", "roster": "operators", "profiles": ["mail", "hook"], "policy": "fallback",
         "message": "{name}"}]}}
    gw = start_gateway(gateway_config)
    event = raise_alarm(gw, "plant/pump8", "page")
    webhook_receiver.wait_for(1)
    told = wait_until(lambda: (s := story(gw, event["id"])) and len(s["notifications"]) == 2 and s)
    mail = told["notifications"][0]
    assert (mail["status"], mail["attempts"]) == ("failed", 3)
    assert all(f"cannot reach SMTP server 127.0.0.1:{down.port}" in a["error"] for a in mail["attemptLog"])
    assert any(t["action"] == "fallback" and "trying hook" in t["why"] for t in told["trace"])


def test_untrusted_certificate_fails_at_once(email_gateway, smtp, tmp_path):
    other = trustme.CA()
    ca = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(ca))
    gw = email_gateway(ca_file=str(ca))
    event = raise_alarm(gw, "plant/pump9", "page")
    told = wait_until(lambda: (s := story(gw, event["id"])) and s["notifications"]
                      and s["notifications"][0]["status"] == "failed" and s)
    n = told["notifications"][0]
    assert n["attempts"] == 1 and "certificate not trusted" in n["lastError"]
    assert smtp.messages == []


# --- config ------------------------------------------------------------------------------------


def _load(config: dict[str, Any]) -> Any:
    pm = default_manager()
    return load_config(config, pm.block_types(), pm.profile_types(), plugins=pm)


def _problems(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        _load(config)
    return str(err.value)


def test_addresses_that_are_not_addresses_are_refused(gateway_config, tmp_path):
    base = {**gateway_config, "profiles": {"mail": {"type": "email", "host": "smtp.plant.example",
                                                    "sender": "alarms@plant.example"}}}
    assert _load(base).profiles["mail"].effective_port == 587
    bad_sender = {**base, "profiles": {"mail": {**base["profiles"]["mail"], "sender": "alarms at plant"}}}
    assert "profiles.mail.sender" in _problems(bad_sender) and "expected an email address" in _problems(bad_sender)
    injected = {**base, "profiles": {"mail": {**base["profiles"]["mail"], "sender": "a@b.c\r\nBcc: x@y.z"}}}
    assert "profiles.mail.sender" in _problems(injected)
    bad_user = {**base, "users": {**base["users"], "maria": {"contacts": {"email": "maria(at)plant"}}}}
    assert "users.maria.contacts" in _problems(bad_user)
    half = {**base, "profiles": {"mail": {**base["profiles"]["mail"], "username": "u"}}}
    assert "username and password go together" in _problems(half)
    missing_ca = {**base, "profiles": {"mail": {**base["profiles"]["mail"], "ca_file": str(tmp_path / "no.pem")}}}
    assert "profiles.mail.ca_file" in _problems(missing_ca)


def test_check_warns_about_plain_smtp_and_broken_templates(gateway_config, tmp_path):
    base = {**gateway_config, "profiles": {"mail": {"type": "email", "host": "smtp.plant.example",
                                                    "sender": "alarms@plant.example", "security": "none",
                                                    "username": "u", "password": "p"}}}
    config = _load(base)
    assert config.profiles["mail"].effective_port == 25
    notices = dict(config.notices)
    assert "password travel unencrypted" in notices["profiles.mail.security"]
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "alarm.html").write_text("{% for e in events %}{{ e.name }")
    broken = {**base, "profiles": {"mail": {**base["profiles"]["mail"], "templates": str(folder)}}}
    assert "alarm.html" in _problems(broken)


def test_template_override_by_folder(email_gateway, smtp, tmp_path):
    folder = tmp_path / "mail-templates"
    folder.mkdir()
    (folder / "alarm.html").write_text("<p>Site template: {{ events[0].name }}</p>")
    gw = email_gateway(templates=str(folder))
    raise_alarm(gw, "plant/fan", "page", name="Fan <1>")
    [got] = smtp.wait_for(1)
    text, html = parts(got["msg"])
    assert html.strip() == "<p>Site template: Fan &lt;1&gt;</p>"
    assert "Fan <1>" in text  # the shipped text template still serves


# --- IMAP reply-acks (Dovecot) ------------------------------------------------------------------

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


@pytest.fixture
def dovecot() -> Any:
    """A real Dovecot on 127.0.0.1 with a throwaway config, passwd-file and maildir.

    As root, Dovecot refuses to run its login and mail processes as root: they run as the
    package's ``dovenull``/``dovecot`` users, so the mail home lives in a world-traversable temp
    folder owned by ``dovecot`` (pytest's own tmp folders are private to root)."""
    if not Path(DOVECOT).exists():
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)")
    import getpass
    import imaplib
    import os
    import pwd
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="annunciator-dovecot-"))
    os.chmod(home, 0o755)
    if os.getuid() == 0:
        try:
            mail_user, login_user = pwd.getpwnam("dovecot"), "dovenull"
            pwd.getpwnam(login_user)
        except KeyError:
            pytest.skip("running as root without the dovecot/dovenull users")
        internal = "dovecot"
    else:
        mail_user = pwd.getpwuid(os.getuid())
        login_user = internal = getpass.getuser()
    (home / "run").mkdir()
    (home / "state").mkdir()
    (home / "mail").mkdir()
    os.chown(home / "mail", mail_user.pw_uid, mail_user.pw_gid)
    port = free_port()
    (home / "users").write_text(f"inbox:{{PLAIN}}imap-pw:{mail_user.pw_uid}:{mail_user.pw_gid}::{home}/mail::\n")
    conf = home / "dovecot.conf"
    conf.write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {home}/run
state_dir = {home}/state
log_path = {home}/dovecot.log
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
default_internal_user = {internal}
default_login_user = {login_user}
mail_location = maildir:{home}/mail/Maildir
first_valid_uid = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {home}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {home}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
""")
    # dovecot daemonizes and its master keeps stdout/stderr: a pipe here would never reach EOF
    with open(home / "start.log", "w") as out:
        proc = subprocess.run([DOVECOT, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                              timeout=20)
    if proc.returncode != 0:
        why = (home / "start.log").read_text().strip()
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"dovecot did not start: {why}")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                imaplib.IMAP4("127.0.0.1", port, timeout=2).logout()
                break
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield type("Dovecot", (), {"port": port, "home": home, "conf": conf})()
    finally:
        subprocess.run([DOVECOT, "-c", str(conf), "stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=20)
        shutil.rmtree(home, ignore_errors=True)


def _deliver(dovecot: Any, msg: EmailMessage) -> None:
    import imaplib

    conn = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=5)
    conn.login("inbox", "imap-pw")
    conn.append("INBOX", "", imaplib.Time2Internaldate(time.time()), msg.as_bytes())
    conn.logout()


def _reply(to: EmailMessage, sender: str, body: str) -> EmailMessage:
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = "alarm-replies@plant.example"
    reply["Subject"] = "Re: " + str(to["Subject"])
    reply["In-Reply-To"] = str(to["Message-ID"])
    reply["References"] = f"{to['References']} {to['Message-ID']}"
    reply.set_content(body + "\n\n> quoted alarm text\n> ACK 9999\n")
    return reply


def test_reply_ack_through_imap(email_gateway, smtp, dovecot):
    gw = email_gateway(reply_to="alarm-replies@plant.example", imap={
        "host": "127.0.0.1", "port": dovecot.port, "security": "none", "username": "inbox",
        "password": "imap-pw", "interval": "200ms"})
    event = raise_alarm(gw, "plant/pump10", "page", name="Pump 10")
    other = raise_alarm(gw, "plant/pump11", "page", name="Pump 11")
    mails = smtp.wait_for(2)
    mine = next(m["msg"] for m in mails if event["id"] in m["msg"]["References"])
    assert mine["Reply-To"] == "alarm-replies@plant.example"

    _deliver(dovecot, _reply(mine, "Mallory <mallory@evil.example>", "ACK 1234"))  # not a known address
    _deliver(dovecot, _reply(mine, "Maria <maria@plant.example>", "ACK 9999 wrong pin"))
    time.sleep(1.0)
    assert not acked(gw, event["id"])
    _deliver(dovecot, _reply(mine, "Maria <MARIA@plant.example>", "ack 1234 pump reset"))
    wait_until(lambda: acked(gw, event["id"]))
    told = story(gw, event["id"])
    [ack] = [a for a in told["audit"] if a["code"] == "Acknowledged"]
    assert (ack["user"], ack["channel"], ack["text"]) == ("maria", "email", "pump reset")
    assert not acked(gw, other["id"])  # only the alarm the thread names
    codes = [a["code"] for a in gw.call(lambda: gw.gateway.audit.query(user=None))]
    assert "EmailUnknownSender" in codes and "PinRejected" in codes
    assert all("1234" not in (a["text"] or "") for a in gw.call(lambda: gw.gateway.audit.query(code="EmailReply")))
