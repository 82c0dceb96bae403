"""The ``annunciator`` command."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from .core.plugins import default_manager
from .launch import DEFAULT_CONFIG, config_path, load, serve, setup_logging


@click.group()
@click.version_option(package_name="annunciator")
def main() -> None:
    """annunciator: alarm pipelines, on-call rosters and notifications."""


@main.command()
@click.option("-c", "--config", help=f"config file (default: $ANNUNCIATOR_CONFIG or {DEFAULT_CONFIG})")
@click.option("--log-level", default="info", show_default=True)
def run(config: str | None, log_level: str) -> None:
    """Run the gateway: HTTP API, pipelines, notifications."""
    setup_logging(log_level)
    cfg, pm = load(config)
    serve(cfg, pm)


@main.command()
@click.argument("config", required=False)
def check(config: str | None) -> None:
    """Validate a config file; exit 2 naming the file, key path and what was expected; exit 1
    when it has stale parts the gateway would skip (an override that has expired)."""
    cfg, _ = load(config)
    s = cfg.settings
    for where, message in cfg.notices:
        click.echo(f"warning: {where}: {message}", err=True)
    if cfg.warnings:
        for where, message in cfg.warnings:
            click.echo(f"{cfg.path}:{where}: {message}", err=True)
        raise SystemExit(1)
    click.echo(f"{cfg.path}: OK: {len(s.pipelines)} pipeline(s), {len(s.profiles)} profile(s), "
               f"{len(s.users)} user(s), {len(s.rosters)} roster(s)")
    if not cfg.gateway.api_tokens:
        click.echo("warning: gateway.api_tokens is empty: the HTTP API will refuse every call", err=True)


@main.command()
@click.option("-c", "--config")
def pipelines(config: str | None) -> None:
    """List the configured pipelines and their blocks."""
    cfg, _ = load(config)
    for p in cfg.pipelines.values():
        click.echo(f"{p.name}  (dropout: {', '.join(sorted(p.dropout)) or 'none'})"
                   + (f" - {p.description}" if p.description else ""))
        for b in p.blocks:
            click.echo(f"  {b.index + 1:>2}. {b.name:<24} {b.type_name}")


@main.command()
def plugins() -> None:
    """List plugins, with the profile and block types they provide."""
    pm = default_manager()
    for info in pm.info:
        line = f"{info.name:<14} {info.status:<8} {info.module}"
        if info.distribution and info.distribution != "annunciator":
            line += f"  [{info.distribution}]"
        if info.error:
            line += f"  ({info.error})"
        click.echo(line)
    click.echo("profile types: " + ", ".join(sorted(pm.profile_types())))
    click.echo("block types:   " + ", ".join(sorted(pm.block_types())))


# --- talking to a running gateway ------------------------------------------------------------

class Unreachable(click.ClickException):
    """No gateway answered (not an error answer from one)."""


class Api:
    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = httpx.request(method, self.url + path, json=body, params=params, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the gateway at {self.url}: {exc}")
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code >= 400:
            raise click.ClickException(f"{r.status_code}: {data.get('error', r.text)}")
        return data


def _api_options(fn: Any) -> Any:
    """-c/--url/--token on every subcommand, so they may come anywhere on the line."""
    import functools

    @click.option("-c", "--config", help="read the URL and token from this config")
    @click.option("--url", envvar="ANNUNCIATOR_URL", help="gateway URL (default from the config)")
    @click.option("--token", envvar="ANNUNCIATOR_TOKEN", help="API token (default: the config's first)")
    @functools.wraps(fn)
    def wrapper(config: str | None, url: str | None, token: str | None, **kwargs: Any) -> Any:
        return fn(_api(config, url, token), **kwargs)

    return wrapper


def _api(config: str | None, url: str | None, token: str | None) -> Api:
    """The gateway's API: URL and token as given, else from the config file."""
    if url is None or token is None:
        path = config_path(config)
        if path.exists():
            cfg, _ = load(str(path))
            http = cfg.gateway.http
            url = url or f"http://{http.host}:{http.port}"
            token = token or (cfg.gateway.api_tokens[0] if cfg.gateway.api_tokens else None)
    return Api(url or "http://127.0.0.1:8088", token)


@main.group()
def alarm() -> None:
    """Raise, clear, acknowledge, list, shelve and trace alarms on a running gateway."""


def _print_events(events: list[dict[str, Any]]) -> None:
    for e in events:
        ack = f" by {e['ackUser']}" if e.get("ackUser") else ""
        click.echo(f"{e['id']}  {e['priority']:<10} {e['state']:<14} {e['displayPath']}  {e['name']}{ack}")


@alarm.command("raise")
@click.argument("source")
@click.option("--name")
@click.option("--priority", type=click.Choice(["Diagnostic", "Low", "Medium", "High", "Critical"],
                                               case_sensitive=False))
@click.option("--value", help="event value (JSON, or text)")
@click.option("--pipeline", help="pipeline to enter when active")
@click.option("--notes", default="")
@click.option("--property", "props", multiple=True, help="associated property KEY=VALUE (repeatable)")
@_api_options
def alarm_raise(api: Api, source: str, name: str | None, priority: str | None, value: str | None,
                pipeline: str | None, notes: str, props: tuple[str, ...]) -> None:
    """Make SOURCE's alarm active."""
    body: dict[str, Any] = {"source": source, "notes": notes}
    if name:
        body["name"] = name
    if priority:
        body["priority"] = priority
    if value is not None:
        try:
            body["eventValue"] = json.loads(value)
        except ValueError:
            body["eventValue"] = value
    if pipeline:
        body["pipelines"] = {"active": pipeline}
    properties = {}
    for p in props:
        key, sep, val = p.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--property")
        properties[key] = val
    if properties:
        body["properties"] = properties
    _print_events(api.call("POST", "/api/alarms", body)["events"])


@alarm.command("clear")
@click.argument("sources", nargs=-1, required=True)
@click.option("--user")
@_api_options
def alarm_clear(api: Api, sources: tuple[str, ...], user: str | None) -> None:
    """Clear the active alarm of each SOURCE."""
    _print_events(api.call("POST", "/api/alarms/clear", {"sources": list(sources), "user": user})["events"])


@alarm.command("ack")
@click.argument("event_ids", nargs=-1, required=True)
@click.option("--user", required=True)
@click.option("--notes", default="")
@_api_options
def alarm_ack(api: Api, event_ids: tuple[str, ...], user: str, notes: str) -> None:
    """Acknowledge events by id: their pipelines stop at once."""
    body = {"eventIds": list(event_ids), "user": user, "notes": notes, "via": "cli"}
    _print_events(api.call("POST", "/api/alarms/acknowledge", body)["events"])


@alarm.command("list")
@click.option("--state")
@click.option("--priority", help="minimum priority")
@click.option("--source", help="glob")
@_api_options
def alarm_list(api: Api, state: str | None, priority: str | None, source: str | None) -> None:
    """List open alarms (active, or cleared but unacknowledged)."""
    params = {k: v for k, v in {"state": state, "priority": priority, "source": source}.items() if v}
    _print_events(api.call("GET", "/api/alarms", params=params)["events"])


@alarm.command("shelve")
@click.argument("sources", nargs=-1, required=True)
@click.option("--minutes", type=float, default=15, show_default=True)
@click.option("--user")
@_api_options
def alarm_shelve(api: Api, sources: tuple[str, ...], minutes: float, user: str | None) -> None:
    """Shelve sources: no notifications until the shelf expires."""
    data = api.call("POST", "/api/shelve", {"sources": list(sources), "minutes": minutes, "user": user})
    click.echo(f"shelved until {data['expiresAt']}: {', '.join(data['sources'])}")


@alarm.command("trace")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
@_api_options
def alarm_trace(api: Api, event_id: str, as_json: bool) -> None:
    """Everything that happened to one event."""
    story = api.call("GET", f"/api/alarms/{event_id}/trace")
    if as_json:
        click.echo(json.dumps(story, indent=2))
        return
    _print_events([story["event"]])
    click.echo("journal:")
    for j in story["journal"]:
        click.echo(f"  {j['ts']}  {j['action']:<13} {j['user'] or ''}  {j['notes'] or ''}")
    names = {i["id"]: i["pipeline"] for i in story["instances"]}
    click.echo("pipelines:")
    for t in story["trace"]:
        click.echo(f"  {t['ts']}  {names.get(t['instanceId'], '?')}/{t['block'] or '-'}"
                   f"  {t['action']:<13} {t['why']}")
    click.echo("notifications:")
    for n in story["notifications"]:
        alarms = f", {n['alarms']} alarms" if n["alarms"] > 1 else ""
        delivery = f", provider says {n['deliveryStatus']}" if n["deliveryStatus"] else ""
        click.echo(f"  {n['created']}  {n['user']} via {n['profile']}"
                   f"{' (' + n['contact'] + ')' if n['contact'] else ''}: {n['status']}{delivery}"
                   f" (attempts {n['attempts']}{alarms}){' ' + n['lastError'] if n['lastError'] else ''}")
        for a in n["attemptLog"]:
            what = "ok" if a.get("ok") else a.get("status") or f"failed: {a.get('error')}"
            retry = f"; retry in {a['retryIn']}s" if a.get("retryIn") is not None else ""
            click.echo(f"      {a['at']}  {what}{retry}")
    for h in story["held"]:
        click.echo(f"  held for {h['user']} until {h['until']}: {h['why']} ({h['alarms']} alarms)")
    click.echo("audit:")
    _print_audit(story["audit"])


def _print_audit(entries: list[dict[str, Any]]) -> None:
    for a in entries:
        who = " ".join(x for x in (a["user"], a["channel"], a["contact"]) if x)
        click.echo(f"  {a['ts']}  {a['code']:<24} {who}  {a['text'] or ''}")


@main.command()
@click.option("--user", help="only this person")
@click.option("--code", help="only this event code, e.g. NotificationFailed, SMSReply")
@click.option("--event", "event_id", help="only entries about this alarm event")
@click.option("--since", help="ISO time, e.g. 2026-11-23T08:00:00Z")
@click.option("--until", help="ISO time")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_api_options
def audit(api: Api, user: str | None, code: str | None, event_id: str | None, since: str | None,
          until: str | None, limit: int, as_json: bool) -> None:
    """The audit log: notifications sent, delivered, failed, acknowledgements, replies."""
    params = {k: v for k, v in {"user": user, "code": code, "eventId": event_id, "since": since,
                                "until": until, "limit": limit}.items() if v is not None}
    entries = api.call("GET", "/api/audit", params=params)["audit"]
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    elif not entries:
        click.echo("no audit entries match")
    else:
        _print_audit(entries)


@main.command()
@_api_options
def status(api: Api) -> None:
    """Running pipeline instances, notifications held back (consolidating or throttled), and what
    waits for a failing provider: each waiting notification, each profile's health, pages given up."""
    live = api.call("GET", "/api/instances")["instances"]
    held = api.call("GET", "/api/held")["held"]
    click.echo(f"running pipeline instances: {len(live)}")
    for i in live:
        for b in i["branches"]:
            wake = f", wakes {b['wakeAt']}" if b["wakeAt"] else ""
            click.echo(f"  {i['pipeline']}/{b['block']}  {i['source']}  {b['timeInBlock']:.0f}s in block{wake}"
                       f"  {b['why']}")
    click.echo(f"held notifications: {len(held)}")
    for h in held:
        click.echo(f"  {h['pipeline']}/{h['block']}  {h['user']}: {h['alarms']} alarm(s), until {h['until']}"
                   f"  {h['why']}")
    waiting = api.call("GET", "/api/waiting")
    for p in waiting["profiles"]:
        state = f"failing since {p['failingSince']}" if p["failingSince"] else "sending"
        alarm = f", alarm {p['alarmEventId']}" if p["alarmEventId"] else ""
        click.echo(f"profile {p['profile']}: {state}, {p['waiting']} waiting, {p['givenUp']} given up{alarm}"
                   + (f"; last error: {p['lastError']}" if p["lastError"] else ""))
    click.echo(f"notifications waiting for a retry: {len(waiting['waiting'])}")
    for w in waiting["waiting"]:
        then = f"; then {', '.join(w['fallback'])}" if w["fallback"] else ""
        click.echo(f"  {w['user']} via {w['profile']}  {', '.join(w['sources'])}: attempt {w['attempts']} failed "
                   f"({w['lastError']}), next {w['nextAttemptAt']}, given up {w['expiresAt']}{then}")
    if waiting["givenUp"]:
        click.echo(f"notifications given up lately: {len(waiting['givenUp'])}")
        for g in waiting["givenUp"]:
            click.echo(f"  {g['at']}  {g['user']} via {g['profile']}: {g['error']}")


@main.command()
@_api_options
@click.option("--json", "as_json", is_flag=True, help="print the API's answer as JSON")
def cluster(api: Api, as_json: bool) -> None:
    """The gateways sharing this database: each node's role, epoch and last heartbeat, and which
    one holds the lease (any node answers; a single node on SQLite says so)."""
    data = api.call("GET", "/api/cluster")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    lease = data["lease"]
    if data.get("single"):
        click.echo(f"single node {lease['node']} (SQLite, or a gateway started without a cluster): always active")
        return
    active = lease.get("active") or {}
    if active.get("node"):
        click.echo(f"active: {active['node']} at {active['address']}, epoch {active['epoch']}, "
                   f"lease renewed {lease['leaseAge']}s ago (lease {lease['lease']:g}s)")
    else:
        click.echo(f"active: none (the lease is free or ran out; a standby takes over within {lease['lease']:g}s)")
    click.echo(f"{'NODE':<24} {'ROLE':<8} {'EPOCH':>5}  {'HEARTBEAT':>9}  {'PID':>7}  {'VERSION':<12} ADDRESS")
    for n in data["nodes"]:
        mark = " *" if n["holdsLease"] else ""
        click.echo(f"{n['node']:<24} {n['role']:<8} {n['epoch'] if n['epoch'] is not None else '-':>5}  "
                   f"{n['heartbeatAge']:>8.1f}s  {n['pid']:>7}  {n['version']:<12} {n['address']}{mark}")


@main.command()
@click.option("--data-dir", default="annunciator-data", show_default=True,
              help="where the demo keeps its config, database and secret")
@click.option("--port", default=8088, show_default=True)
def demo(data_dir: str, port: int) -> None:
    """Run the gateway on its embedded example config and raise a demo alarm."""
    from .demo import run_demo

    run_demo(Path(data_dir), port)


@main.command("twilio-emulator")
@click.option("--port", default=8089, show_default=True, help="port on 127.0.0.1 (0: any free port)")
@click.option("--account-sid", envvar="TWILIO_EMULATOR_ACCOUNT_SID", help="default: a new AC… SID")
@click.option("--auth-token", envvar="TWILIO_EMULATOR_AUTH_TOKEN", help="default: a new random token")
@click.option("--number", "numbers", multiple=True, help="a number the account owns (repeatable)")
@click.option("--sms-url", help="where inbound SMS go: the gateway's public /twilio/sms URL")
@click.option("--step-delay", type=float, default=0.5, show_default=True,
              help="seconds between queued, sent and delivered")
@click.option("--log-level", default="info", show_default=True)
def twilio_emulator(port: int, account_sid: str | None, auth_token: str | None, numbers: tuple[str, ...],
                    sms_url: str | None, step_delay: float, log_level: str) -> None:
    """Run the Twilio emulator on 127.0.0.1 until interrupted, logging every message and call."""
    import time

    from .testing.twilio import DEFAULT_NUMBER, TwilioEmulator

    setup_logging(log_level)
    tw = TwilioEmulator(account_sid=account_sid, auth_token=auth_token, numbers=numbers or (DEFAULT_NUMBER,),
                        sms_url=sms_url, step_delay=step_delay, port=port)
    with tw:
        click.echo("Twilio emulator listening. Put this in the gateway's Twilio account config:")
        click.echo(f"  account_sid: {tw.account_sid}")
        click.echo(f"  auth_token:  {tw.auth_token}")
        click.echo(f"  api_base:    {tw.base_url}")
        click.echo(f"  numbers:     {', '.join(tw.numbers)}")
        click.echo(f"  messaging_service_sid: {tw.messaging_service_sid}")
        click.echo("Inbound SMS go to: " + (sms_url or "(nowhere: give --sms-url)"))
        click.echo("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopped")


@main.group()
def user() -> None:
    """On-call users on a running gateway: list them, set PINs, clear lockouts."""


@user.command("list")
@_api_options
def user_list(api: Api) -> None:
    """Users, whether each has a PIN (and when it expires), and any lockout."""
    for u in api.call("GET", "/api/users")["users"]:
        lock = f"  LOCKED until {u['lockedUntil']}" if u["lockedUntil"] else ""
        expiry = ""
        if u.get("pinExpired"):
            expiry = f"  PIN EXPIRED {u['pinExpires'][:10]}"
        elif u.get("pinExpires"):
            expiry = f"  PIN expires {u['pinExpires'][:10]}"
        contacts = ", ".join(f"{k}: {' '.join(v)}" for k, v in u["contacts"].items())
        pin = "PIN" if u["hasPin"] else "no PIN"
        click.echo(f"{u['id']:>4}  {u['username']:<16} {pin:<7} {contacts}{lock}{expiry}")


@user.command("pin")
@click.argument("username")
@click.option("--pin-stdin", is_flag=True, help="read the PIN from standard input (for scripts)")
@_api_options
def user_pin(api: Api, username: str, pin_stdin: bool) -> None:
    """Set USERNAME's PIN (asked twice, not echoed). A `pin:` in the config wins at restart."""
    if pin_stdin:
        pin = sys.stdin.readline().strip()
    else:
        pin = click.prompt("New PIN", hide_input=True, confirmation_prompt=True)
    api.call("POST", f"/api/users/{username}/pin", {"pin": pin})
    click.echo(f"PIN set for {username}")


@user.command("unlock")
@click.argument("username")
@_api_options
def user_unlock(api: Api, username: str) -> None:
    """Clear a lockout after too many wrong PINs."""
    api.call("POST", f"/api/users/{username}/unlock", {})
    click.echo(f"{username} unlocked")


@main.group()
def sms() -> None:
    """SMS on a running gateway: who has opted out, and clearing an opt-out."""


@sms.group("opt-outs", invoke_without_command=True)
@click.pass_context
def sms_opt_outs(ctx: click.Context) -> None:
    """Numbers that sent STOP (to a pool's number) or STOPALL; `list` is the default."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(sms_opt_outs_list)


@sms_opt_outs.command("list")
@click.option("--number", help="only this number")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@_api_options
def sms_opt_outs_list(api: Api, number: str | None = None, as_json: bool = False) -> None:
    """Every active opt-out: number, scope (account/pool, or * for STOPALL), source, since."""
    items = api.call("GET", "/api/sms/opt-outs", params={"number": number} if number else None)["optOuts"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no opt-outs")
    for o in items:
        scope = "all senders (STOPALL)" if o["all"] else f"pool {o['pool']} of {o['account']}" if o["pool"] \
            else f"numbers of {o['account']} in no pool"
        click.echo(f"{o['number']:<16} {scope:<36} {o['source'] or '':<9} since {o['since']}")


@sms_opt_outs.command("clear")
@click.argument("number")
@click.option("--scope", help="only this scope (as `list` prints it: account/pool, or *)")
@click.option("--user", "who", required=True, help="who clears it (written to the audit log)")
@click.confirmation_option(prompt="The person asked to be texted again?")
@_api_options
def sms_opt_outs_clear(api: Api, number: str, scope: str | None, who: str) -> None:
    """Clear NUMBER's opt-out (audited as OptOutCleared): texts reach it again."""
    params = {"user": who, **({"scope": scope} if scope else {})}
    out = api.call("DELETE", f"/api/sms/opt-outs/{number}", params=params)
    for o in out["cleared"]:
        click.echo(f"cleared {o['number']} ({o['scope']})")


# --- on call ---------------------------------------------------------------------------------

def _local_zone(tz: str | None) -> Any:
    """The zone a person typed times in: --tz, else this machine's."""
    from .core.schedules import zone

    if tz is None:
        return datetime.now().astimezone().tzinfo
    try:
        return zone(tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tz")


def _when(value: str, tz: Any, hint: str) -> datetime:
    from .core.oncall import parse_when

    if value.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        return parse_when(value, tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint)


def _print_resolutions(at: datetime, tz: Any, resolutions: list[dict[str, Any]]) -> None:
    from .core.oncall import format_local, format_seconds

    click.echo(f"on call at {format_local(at, tz)} ({at.astimezone(UTC).isoformat()}):")
    for r in resolutions:
        how = r["order"] + (f", {format_seconds(r['ackWait'])} each to acknowledge" if r.get("ackWait") else "")
        click.echo(f"{r['roster']} ({how}): {', '.join(r['users']) or 'nobody'}")
        for line in r["why"]:
            click.echo(f"    {line}")


@main.command()
@click.argument("when", default="now")
@click.option("--tz", help="time zone of WHEN (if it has no offset) and of the times shown; default: this machine's")
@click.option("--roster", help="only this roster")
@click.option("--json", "as_json", is_flag=True)
@click.option("--offline", is_flag=True, help="compute from the config file without asking the gateway")
@click.option("-c", "--config", help="config file: the gateway's URL and token, and the rota when offline")
@click.option("--url", envvar="ANNUNCIATOR_URL", help="gateway URL (default from the config)")
@click.option("--token", envvar="ANNUNCIATOR_TOKEN", help="API token (default: the config's first)")
def oncall(when: str, tz: str | None, roster: str | None, as_json: bool, offline: bool, config: str | None,
           url: str | None, token: str | None) -> None:
    """Who is on call NOW or at WHEN ("2026-12-24 23:00", ISO 8601), in each roster, and why.

    Asks the running gateway, which knows the overrides added at runtime. When no gateway
    answers, computes from the config file alone, so a rota can be checked before starting.
    """
    zone = _local_zone(tz)
    at = _when(when, zone, "WHEN")
    data: dict[str, Any] | None = None
    if not offline:
        params = {"at": at.isoformat(), **({"roster": roster} if roster else {})}
        try:
            data = _api(config, url, token).call("GET", "/api/oncall", params=params)
        except Unreachable as exc:
            if config is None and not config_path(None).exists():
                raise
            click.echo(f"{exc.message}\ncomputed from {config_path(config)} alone: "
                       "overrides added at runtime are not included", err=True)
    if data is None:
        from .core.errors import NotFound
        from .core.oncall import OnCall

        cfg, _ = load(config)
        oc = OnCall(cfg)
        try:
            resolutions = [oc.resolve(roster, at)] if roster else oc.who(at)
        except NotFound as exc:
            raise click.ClickException(str(exc))
        data = {"at": at.isoformat(), "rosters": [r.to_dict() for r in resolutions], "offline": True}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_resolutions(at, zone, data["rosters"])


@main.group()
def override() -> None:
    """On-call overrides on a running gateway: "maria covers for li until Monday 08:00"."""


@override.command("add")
@click.option("--user", required=True, help="who is on call")
@click.option("--covers", help="whom they replace (in --roster, or in every roster of theirs)")
@click.option("--roster", help="the roster; without --covers the user is added to it")
@click.option("--from", "starts", help="start (default: now)")
@click.option("--until", required=True, help='end, e.g. "2026-11-30 08:00"')
@click.option("--tz", help="time zone of times without an offset; default: this machine's")
@click.option("--notes", default="")
@click.option("--by", "created_by", default=lambda: os.environ.get("USER"), help="who makes the change")
@_api_options
def override_add(api: Api, user: str, covers: str | None, roster: str | None, starts: str | None, until: str,
                 tz: str | None, notes: str, created_by: str | None) -> None:
    """Put USER on call in someone's place, or in a roster, for a while."""
    zone = _local_zone(tz)
    body: dict[str, Any] = {"user": user, "covers": covers, "roster": roster, "notes": notes,
                            "until": _when(until, zone, "--until").isoformat(), "createdBy": created_by}
    if starts:
        body["from"] = _when(starts, zone, "--from").isoformat()
    _print_overrides([api.call("POST", "/api/overrides", body)], zone)


@override.command("list")
@click.option("--tz", help="time zone of the times shown; default: this machine's")
@click.option("--json", "as_json", is_flag=True)
@_api_options
def override_list(api: Api, tz: str | None, as_json: bool) -> None:
    """Overrides that have not ended, from the config file and added at runtime."""
    items = api.call("GET", "/api/overrides")["overrides"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
    elif not items:
        click.echo("no overrides")
    else:
        _print_overrides(items, _local_zone(tz))


@override.command("remove")
@click.argument("override_id")
@_api_options
def override_remove(api: Api, override_id: str) -> None:
    """End an override added at runtime, at once (the record is kept)."""
    o = api.call("DELETE", f"/api/overrides/{override_id}")
    click.echo(f"removed override {o['id']}")


@main.command("tags")
@click.argument("path", default="")
@click.option("--set", "set_value", metavar="VALUE", help="write VALUE (JSON, or text) to the tag at PATH")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@_api_options
def tags_cmd(api: Api, path: str, set_value: str | None, as_json: bool) -> None:
    """Print the tag tree (under PATH) of a running gateway, or write one tag with --set."""
    if set_value is not None:
        if not path:
            raise click.UsageError("--set needs a tag PATH")
        try:
            value = json.loads(set_value)
        except ValueError:
            value = set_value
        tag = api.call("POST", f"/api/tags/{path}", {"value": value})
        click.echo(f"{tag['path']} = {json.dumps(tag['value'])}  [{tag['quality']}]")
        return
    items = api.call("GET", "/api/tags", params={"path": path} if path else None)["tags"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    _print_tag_tree(items)


def _print_tag_tree(items: list[dict[str, Any]]) -> None:
    """Folders once, indented; each tag with its type, value and quality; datasets as a table."""
    shown: set[tuple[str, ...]] = set()
    for t in items:
        parts = t["path"].split("/")
        for depth in range(len(parts) - 1):
            folder = tuple(parts[:depth + 1])
            if folder not in shown:
                shown.add(folder)
                click.echo("  " * depth + parts[depth] + "/")
        indent = "  " * (len(parts) - 1)
        quality = "" if t["quality"] == "Good" else f"  [{t['quality']}]"
        value = t["value"]
        if t["dataType"] == "Dataset" and isinstance(value, dict):
            rows = value.get("rows", [])
            click.echo(f"{indent}{parts[-1]:<28} Dataset   {len(rows)} row(s){quality}")
            click.echo(f"{indent}    " + " | ".join(value.get("columns", [])))
            for row in rows:
                click.echo(f"{indent}    " + " | ".join("" if v is None else str(v) for v in row))
        else:
            click.echo(f"{indent}{parts[-1]:<28} {t['dataType']:<9} {json.dumps(value)}{quality}")


@main.group()
def script() -> None:
    """Run scripts in a running gateway (as Ignition's script console does)."""


@script.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_api_options
def script_run(api: Api, file: Path) -> None:
    """Run FILE in the gateway with `system` in scope; print what it printed (and its `result`).
    Exit 1 when it fails, naming the file and line."""
    source = file.read_text(encoding="utf-8")
    out = api.call("POST", "/api/scripts/run", {"source": source, "filename": file.name})
    if out.get("stdout"):
        click.echo(out["stdout"], nl=False)
    if out.get("result") is not None:
        click.echo(json.dumps(out["result"], indent=2, default=str))
    if not out.get("ok"):
        click.echo(f"error at {out.get('where')}: {out.get('error')}", err=True)
        if out.get("traceback"):
            click.echo(out["traceback"].rstrip(), err=True)
        sys.exit(1)


def _print_overrides(items: list[dict[str, Any]], tz: Any) -> None:
    from .core.oncall import ALWAYS, format_local

    for o in items:
        what = f"covers for {o['covers']}" + (f" in {o['roster']}" if o["roster"] else "") if o["covers"] \
            else f"added to {o['roster']}"
        starts = datetime.fromisoformat(o["from"])
        since = "" if starts <= ALWAYS else f" from {format_local(starts, tz)}"
        by = f", by {o['createdBy']}" if o.get("createdBy") else ""
        notes = f"  {o['notes']}" if o.get("notes") else ""
        click.echo(f"{o['id']}  {o['user']} {what}{since} until {format_local(datetime.fromisoformat(o['until']), tz)}"
                   f"  [{o['source']}{by}]{notes}")


def _console_commands() -> None:
    # the console's own CLI lives with it; registered here so `annunciator console-user` exists
    from .console.cli import console_user

    main.add_command(console_user)


_console_commands()
