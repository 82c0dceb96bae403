"""Config validation: what `load_config` refuses and what `annunciator check` prints for it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from annunciator.core.errors import ConfigError
from annunciator.core.loader import load_config
from annunciator.core.plugins import default_manager

BLOCK_TYPES = "delay, escalate, expression, jump, notification, script, set-property, splitter, switch"

# Lines 1-11; pipelines start on line 12.
BASE = """\
gateway:
  api_tokens: [secret-token]
profiles:
  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}
users:
  maria: {name: Maria, contacts: {sms: "+15550100001"}}
  li: {name: Li}
rosters:
  operators: [maria]
  supervisors: [li]
pipelines:
"""


def write(tmp_path: Path, pipelines: str = "", base: str = BASE, name: str = "annunciator.yaml") -> Path:
    path = tmp_path / name
    if not pipelines:
        base = base.replace("pipelines:\n", "pipelines: {}\n")
    path.write_text(base + textwrap.indent(textwrap.dedent(pipelines), "  "), encoding="utf-8")
    return path


def load(path: Path | dict, env: dict[str, str] | None = None, plugin_env: dict[str, str] | None = None):
    pm = default_manager(plugin_env or {})
    return load_config(path, pm.block_types(), pm.profile_types(), env=env or {})


def problems(path: Path | dict, **kwargs) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    return info.value.problems


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ANNUNCIATOR_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "annunciator", "check", str(path)],
                          capture_output=True, text=True, env=full, timeout=60)


NIGHT = """\
night:
  blocks:
    - type: notification
      profile: hook
      roster: operators
    - type: delay
      delay: soon
"""


# --- annunciator check (subprocess) ------------------------------------------------------------

def test_check_bad_duration_names_file_line_key_and_expectation(tmp_path):
    path = write(tmp_path, NIGHT)
    r = check(path)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr.strip() == (
        f"{path}:18: pipelines.night.blocks[1].delay: expected a duration like \"30s\", got \"soon\"")


def test_check_valid_config_exits_0(tmp_path):
    path = write(tmp_path, NIGHT.replace("soon", "30s"))
    r = check(path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: OK: 1 pipeline(s), 1 profile(s), 2 user(s), 2 roster(s)"
    assert r.stderr == ""


def test_check_unknown_block_type_lists_installed_types(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - type: sleep
              delay: 5s
        """)
    r = check(path)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"{path}:14: pipelines.p.blocks[0].type: unknown block type 'sleep'; installed: {BLOCK_TYPES}")


def test_check_unset_environment_variable_is_named(tmp_path):
    base = BASE.replace('"http://127.0.0.1:9/hook"', '"${HOOK_URL}"')
    path = write(tmp_path, NIGHT.replace("soon", "1m"), base=base)
    r = check(path)
    assert r.returncode == 2
    assert f"{path}:4: profiles.hook.url: environment variable HOOK_URL is not set" in r.stderr.splitlines()
    r = check(path, env={"HOOK_URL": "http://127.0.0.1:9/from-env"})
    assert r.returncode == 0, r.stderr


def test_check_with_scripting_disabled_refuses_script_blocks(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - type: script
              code: "state['x'] = 1"
        """)
    assert check(path).returncode == 0
    r = check(path, env={"ANNUNCIATOR_DISABLE_PLUGINS": "scripting"})
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"{path}:14: pipelines.p.blocks[0].type: unknown block type 'script'; installed: "
        f"{BLOCK_TYPES.replace('script, ', '')}")


def test_check_missing_file_and_bad_yaml(tmp_path):
    r = check(tmp_path / "nope.yaml")
    assert r.returncode == 2
    assert r.stderr.startswith(f"{tmp_path / 'nope.yaml'}: cannot read config: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines:\n  p: [\n", encoding="utf-8")
    r = check(bad)
    assert r.returncode == 2
    assert r.stderr.startswith(f"{bad}: line 3, column 1: not valid YAML")


# --- annunciator plugins -----------------------------------------------------------------------

def plugins(env: dict[str, str] | None = None) -> list[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ANNUNCIATOR_")}
    full.update(env or {})
    r = subprocess.run([sys.executable, "-m", "annunciator", "plugins"], capture_output=True, text=True,
                       env=full, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_plugins_lists_webhook_and_script():
    lines = plugins()
    rows = {line.split()[0]: line.split()[1:3] for line in lines if not line.endswith(":")
            and ":" not in line.split()[0]}
    assert rows["webhook"] == ["loaded", "annunciator.plugins.webhook.plugin"]
    assert rows["scripting"] == ["loaded", "annunciator.scripting.plugin"]
    assert "profile types: email, twilio-sms, twilio-voice, webhook" in lines
    assert rows["twilio_sms"] == ["loaded", "annunciator.plugins.twilio_sms.plugin"]
    assert f"block types:   {BLOCK_TYPES}" in lines


def test_plugins_with_scripting_disabled_shows_it_blocked():
    lines = plugins({"ANNUNCIATOR_DISABLE_PLUGINS": "scripting"})
    [scripting] = [line for line in lines if line.startswith("scripting ")]
    assert scripting.split() == ["scripting", "blocked", "annunciator.scripting.plugin"]
    [webhook] = [line for line in lines if line.startswith("webhook ")]
    assert webhook.split()[1] == "loaded"
    [types] = [line for line in lines if line.startswith("block types:")]
    assert "script" not in types.split(":", 1)[1].replace(",", " ").split()
    assert "notification" in types


# --- load_config: what is refused ------------------------------------------------------------

def test_bad_duration_problem_and_rendering(tmp_path):
    path = write(tmp_path, NIGHT)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        ("pipelines.night.blocks[1].delay", "expected a duration like \"30s\", got \"soon\"")]
    assert str(info.value) == (
        f"{path}:18: pipelines.night.blocks[1].delay: expected a duration like \"30s\", got \"soon\"")


@pytest.mark.parametrize("value", ["soon", "-5s", "5 parsecs", ".inf", ".nan", "'nan'", "'inf'", "99999999999d",
                                   "true", "[5s]"])
def test_durations_refused(tmp_path, value):
    path = write(tmp_path, NIGHT.replace("soon", value))
    [(key, message)] = problems(path)
    assert key == "pipelines.night.blocks[1].delay"
    assert message.startswith("expected a duration")


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("1h30m", 5400), ("250ms", 0.25), ("5", 5),
                                                ("2.5", 2.5), ("1d", 86400), ("0", 0)])
def test_durations_accepted(tmp_path, value, seconds):
    config = load(write(tmp_path, NIGHT.replace("soon", value)))
    assert config.pipelines["night"].blocks[1].settings.delay == seconds


def test_unknown_profile_type(tmp_path):
    base = BASE.replace("profiles:\n", "profiles:\n  pager: {type: pager, number: 5}\n")
    assert problems(write(tmp_path, base=base)) == [
        ("profiles.pager.type", "unknown profile type 'pager'; installed: email, twilio-sms, twilio-voice, webhook")]


def test_profile_settings_checked_by_its_type(tmp_path):
    base = BASE.replace('url: "http://127.0.0.1:9/hook"', 'url: "not a url", retries: 3')
    found = dict(problems(write(tmp_path, base=base)))
    assert set(found) == {"profiles.hook.url", "profiles.hook.retries"}
    assert found["profiles.hook.retries"] == "unknown key"
    assert "not a url" in found["profiles.hook.url"]


def test_unknown_roster_and_profile_referenced_by_blocks(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - type: notification
              profile: sms
              roster: nightshift
            - type: escalate
              profile: hook
              tiers:
                - {roster: operators, wait: 1m}
                - {roster: managers, wait: 1m, profiles: [hook, voice]}
        """)
    assert problems(path) == [
        ("pipelines.p.blocks[0].profile", "unknown profile 'sms'; defined: hook"),
        ("pipelines.p.blocks[0].roster", "unknown roster 'nightshift'; defined: operators, supervisors"),
        ("pipelines.p.blocks[1].tiers[1].profiles[1]", "unknown profile 'voice'; defined: hook"),
        ("pipelines.p.blocks[1].tiers[1].roster", "unknown roster 'managers'; defined: operators, supervisors"),
    ]


def test_unknown_user_in_roster(tmp_path):
    base = BASE.replace("supervisors: [li]", "supervisors: {users: [li, bob]}").replace(
        "operators: [maria]", "operators: [zed, maria]")
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, base=base))
    assert info.value.problems == [
        ("rosters.operators[0]", "unknown user 'zed'; known users: li, maria"),
        ("rosters.supervisors.users[1]", "unknown user 'bob'; known users: li, maria"),
    ]
    assert str(info.value).splitlines()[0] == (
        f"{tmp_path / 'annunciator.yaml'}:9: rosters.operators[0]: unknown user 'zed'; known users: li, maria")


def test_jump_loop_without_a_wait_is_refused(tmp_path):
    path = write(tmp_path, """\
        p1:
          blocks:
            - {type: notification, profile: hook, roster: operators}
            - {type: jump, pipeline: p2}
        p2:
          blocks:
            - {type: jump, pipeline: p1}
        """)
    [(key, message)] = problems(path)
    assert key == "pipelines.p1.blocks[0]"
    assert message == ("loop never reaches a wait (delay or escalate): "
                       "p1.notification-1 -> p1.jump-2 -> p2.jump-1 -> p1.notification-1")


def test_loop_inside_a_pipeline_through_a_zero_delay_is_refused(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - {type: set-property, name: count, property: n, expression: "n|default(0) + 1"}
            - {type: delay, delay: 0s}
            - {type: expression, expression: "n < 3", "true": count}
        """)
    [(key, message)] = problems(path)
    assert key == "pipelines.p.blocks[0]"
    assert "never reaches a wait" in message and "p.expression-3 -> p.count" in message


def test_loops_through_a_delay_or_escalate_are_accepted(tmp_path):
    config = load(write(tmp_path, """\
        p1:
          blocks:
            - {type: notification, profile: hook, roster: operators}
            - {type: delay, delay: 10m}
            - {type: jump, pipeline: p2}
        p2:
          blocks:
            - {type: jump, pipeline: p1}
        p3:
          blocks:
            - {type: escalate, name: ladder, profile: hook, tiers: [{roster: operators, wait: 5m}]}
            - {type: expression, expression: "not isAcked", "true": ladder}
        """))
    assert sorted(config.pipelines) == ["p1", "p2", "p3"]


def test_expression_syntax_error_refused_at_load(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - type: expression
              expression: "eventValue >"
        """)
    [(key, message)] = problems(path)
    assert key == "pipelines.p.blocks[0].expression"
    assert message.startswith("invalid expression 'eventValue >': ")


def test_switch_and_set_property_expressions_checked_too(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - {type: switch, expression: "priority ==", cases: {High: end}}
            - {type: set-property, property: "bad name", expression: "1 +* 2"}
        """)
    keys = [k for k, _ in problems(path)]
    assert keys == ["pipelines.p.blocks[0].expression", "pipelines.p.blocks[1].property",
                    "pipelines.p.blocks[1].expression"]


def test_yaml_true_false_and_number_keys_are_names(tmp_path):
    # YAML 1.1 reads a bare `true:` key as a boolean and `1:` as a number; in a config every
    # key is a name, so the expression block's true/false routes and a switch on numbers work.
    config = load(write(tmp_path, """\
        p:
          blocks:
            - type: expression
              expression: eventValue > 10
              true: big
              false: small
            - type: switch
              name: big
              expression: eventValue
              cases: {11: small, 12.5: end}
            - {type: notification, name: small, profile: hook, roster: operators}
        """))
    expr, switch, _ = config.pipelines["p"].blocks
    assert (expr.settings.true, expr.settings.false) == ("big", "small")
    assert switch.settings.cases == {"11": "small", "12.5": "end"}


def test_unknown_env_variable_with_default_and_set(tmp_path):
    base = BASE.replace('"http://127.0.0.1:9/hook"', '"${HOOK_URL}"').replace(
        "api_tokens: [secret-token]", "api_tokens: ['${TOKEN:-fallback}']")
    path = write(tmp_path, base=base)
    found = problems(path)
    assert ("profiles.hook.url", "environment variable HOOK_URL is not set") in found
    config = load(path, env={"HOOK_URL": "http://10.0.0.1/x"})
    assert str(config.profiles["hook"].url) == "http://10.0.0.1/x"
    assert config.gateway.api_tokens == ["fallback"]
    assert load(path, env={"HOOK_URL": "http://a.example/", "TOKEN": "t0"}).gateway.api_tokens == ["t0"]


def test_phone_numbers_normalised_and_bad_ones_refused(tmp_path):
    base = BASE.replace('contacts: {sms: "+15550100001"}',
                        'contacts: {sms: ["+1 (222) 333-4444", "+44 20 7946 0958"], phone: "+1-222-333-4444"}')
    config = load(write(tmp_path, base=base))
    assert config.settings.users["maria"].contacts == {
        "sms": ["+12223334444", "+442079460958"], "phone": ["+12223334444"]}
    for bad in ("12345", "+1 22", "call me"):
        base = BASE.replace('"+15550100001"', f'"{bad}"')
        assert problems(write(tmp_path, base=base)) == [
            ("users.maria.contacts",
             f'expected a phone number in international form like "+15551234567", got {bad!r}')]


def test_script_syntax_error_and_missing_script_file(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - {type: script, code: "x = ("}
            - {type: script, script: missing.py}
            - {type: script}
        """)
    found = problems(path)
    assert found[0][0] == "pipelines.p.blocks[2]"
    assert "give either script: FILE" in found[0][1]
    path = write(tmp_path, """\
        p:
          blocks:
            - {type: script, code: "x = ("}
            - {type: script, script: missing.py}
        """)
    found = problems(path)
    assert found[0][0] == "pipelines.p.blocks[0].code"
    assert found[0][1].startswith("syntax error at line 1: ")
    assert found[1] == ("pipelines.p.blocks[1].script",
                        f"no such script file: {tmp_path / 'scripts' / 'missing.py'}")


def test_block_names_and_targets_checked(tmp_path):
    path = write(tmp_path, """\
        p:
          blocks:
            - {type: delay, name: wait, delay: 1s, next: nowhere}
            - {type: delay, name: wait, delay: 1s}
            - {type: splitter, outputs: [wait, gone]}
            - {type: jump, pipeline: elsewhere}
            - {type: delay, delai: 5s}
        """)
    # a block whose own settings are wrong stops the check before references are followed
    assert problems(path) == [("pipelines.p.blocks[4].delay", "required"),
                              ("pipelines.p.blocks[4].delai", "unknown key")]
    path = write(tmp_path, """\
        p:
          blocks:
            - {type: delay, name: wait, delay: 1s, next: nowhere}
            - {type: delay, name: wait, delay: 1s}
            - {type: splitter, outputs: [wait, gone]}
            - {type: jump, name: end, pipeline: elsewhere}
        """)
    assert problems(path) == [
        ("pipelines.p.blocks[0]", "goes to unknown block 'nowhere'; blocks in p: end, splitter-3, wait"),
        ("pipelines.p.blocks[1].name", "block name 'wait' is used twice in the pipeline"),
        ("pipelines.p.blocks[2]", "goes to unknown block 'gone'; blocks in p: end, splitter-3, wait"),
        ("pipelines.p.blocks[3].name", '"end" is reserved'),
        ("pipelines.p.blocks[3].pipeline", "unknown pipeline 'elsewhere'; defined: p"),
    ]


def test_alarm_definitions_checked(tmp_path):
    base = BASE.replace("pipelines:\n", textwrap.dedent("""\
        alarms:
          - source: "plant/*"
            priority: Urgent
            pipelines: {active: page, resolved: page}
        pipelines:
        """))
    found = problems(write(tmp_path, base=base))
    assert [k for k, _ in found] == ["alarms[0].priority", "alarms[0].pipelines"]
    assert "expected a priority (Diagnostic, Low, Medium, High, Critical or 0-4), got 'Urgent'" in found[0][1]
    assert "unknown transition 'resolved'" in found[1][1]
    base = base.replace("priority: Urgent", "priority: high").replace(", resolved: page", "")
    assert problems(write(tmp_path, base=base)) == [
        ("alarms[0].pipelines.active", "unknown pipeline 'page'; defined: (none)")]


def test_dropout_and_unknown_top_level_keys(tmp_path):
    path = write(tmp_path, """\
        p:
          dropout: [acknowledged, resolved]
          blocks:
            - {type: delay, delay: 1s}
        """, base=BASE + "  # comment\n").with_suffix(".yaml")
    assert problems(path) == [
        ("pipelines.p.dropout",
         "unknown dropout condition 'resolved'; expected acknowledged, cleared, shelved")]
    assert problems({"gatway": {}}) == [("gatway", "unknown key")]
    assert problems({"pipelines": {"p": {"blocks": []}}}) == [
        ("pipelines.p.blocks", "a pipeline needs at least one block")]


def test_many_problems_reported_at_once(tmp_path):
    path = write(tmp_path, """\
        a:
          blocks:
            - {type: delay, delay: soon}
        b:
          blocks:
            - {type: notification, roster: operators}
            - {type: teleport}
        """)
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}:14: pipelines.a.blocks[0].delay: expected a duration like \"30s\", got \"soon\"",
        f"{path}:17: pipelines.b.blocks[0]: needs a profile (profile: NAME) or profiles: [NAME, ...]",
        f"{path}:18: pipelines.b.blocks[1].type: unknown block type 'teleport'; installed: {BLOCK_TYPES}",
    ]


def test_check_says_when_a_failing_profile_would_page_nobody(tmp_path):
    two = BASE.replace('  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}\n',
                       '  hook: {type: webhook, url: "http://127.0.0.1:9/hook"}\n'
                       '  mail: {type: webhook, url: "http://127.0.0.1:9/mail"}\n')
    r = check(write(tmp_path, NIGHT.replace("delay: soon", "delay: 1m"), base=two))
    assert r.returncode == 0, r.stderr
    assert "warning: gateway.profile_alarms.pipeline: not set: when a profile keeps failing" in r.stderr
    routed = two.replace("api_tokens: [secret-token]\n", "api_tokens: [secret-token]\n"
                         "  profile_alarms: {pipeline: night}\n")
    r = check(write(tmp_path, NIGHT.replace("delay: soon", "delay: 1m"), base=routed))
    assert r.returncode == 0 and "profile_alarms" not in r.stderr, r.stderr
    wrong = routed.replace("{pipeline: night}", "{pipeline: nope}")
    r = check(write(tmp_path, NIGHT.replace("delay: soon", "delay: 1m"), base=wrong))
    assert r.returncode == 2
    assert ":3: gateway.profile_alarms.pipeline: unknown pipeline 'nope'; defined: night" in r.stderr


def test_check_names_a_script_file_that_is_not_utf8(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bad.py").write_bytes(b'x = "caf\xe9"\n')
    path = tmp_path / "annunciator.yaml"
    path.write_text("gateway: {api_tokens: [t]}\nscripts:\n  startup: [{script: bad.py}]\n", encoding="utf-8")
    r = check(path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"{path}:3: scripts.startup[0].script: syntax error at line 1: not UTF-8 text "
                                "(byte 8 is 0xe9); save the script as UTF-8")
