"""Plugins: third-party ones load from the entry-point group exactly like the built-ins."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import annunciator.core.hookspecs as hookspecs


def test_every_hook_is_documented():
    specs = [f for name, f in vars(hookspecs).items() if name.startswith("annunciator_")]
    assert len(specs) >= 9
    for fn in specs:
        doc = inspect.getdoc(fn) or ""
        assert "called" in doc.lower(), f"{fn.__name__}: say when it is called"
        assert "return" in doc.lower(), f"{fn.__name__}: say what it returns"


def _install_fake_distribution(root, name: str, module_source: str) -> None:
    """A real installed distribution (dist-info with entry_points.txt) on a path dir."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[annunciator]\n{name} = {name}\n")


PLUGIN = """
    from annunciator import hookimpl
    from annunciator.core.pipeline import Block, BlockSettings, Next
    from annunciator.core.profiles import DeliveryResult, NotificationProfile

    class Shout(Block):
        type_name = "shout"
        class Settings(BlockSettings):
            word: str
        def enter(self, ctx):
            ctx.properties["shout"] = self.settings.word.upper()
            return Next(why="shouted")

    class Null(NotificationProfile):
        type_name = "quiet"
        async def send(self, notification):
            return DeliveryResult.sent("null-1")

    @hookimpl
    def annunciator_block_types():
        return [Shout]

    @hookimpl
    def annunciator_profile_types():
        return [Null]
"""


def run_cli(args, tmp_path, env_extra=None):
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "annunciator", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_third_party_plugin_from_entry_point(tmp_path):
    _install_fake_distribution(tmp_path, "annunciator_shout", PLUGIN)
    r = run_cli(["plugins"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "annunciator_shout" in r.stdout and "loaded" in r.stdout
    assert "quiet" in r.stdout.split("profile types:")[1].split("\n")[0]
    assert "shout" in r.stdout.split("block types:")[1]

    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""
        profiles: {quiet: {type: quiet}}
        users: {maria: {}}
        rosters: {ops: [maria]}
        pipelines:
          p:
            blocks:
              - {type: shout, word: hello}
              - {type: notification, profile: quiet, roster: ops, message: "{shout}"}
    """))
    r = run_cli(["check", str(config)], tmp_path)
    assert r.returncode == 0, r.stderr

    r = run_cli(["check", str(config)], tmp_path, {"ANNUNCIATOR_DISABLE_PLUGINS": "annunciator_shout"})
    assert r.returncode == 2
    assert "unknown profile type 'quiet'" in r.stderr
    assert "unknown block type 'shout'" in r.stderr


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    _install_fake_distribution(tmp_path, "annunciator_broken", "raise ImportError('needs libfoo')\n")
    r = run_cli(["plugins"], tmp_path)
    assert r.returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("annunciator_broken"))
    assert "failed" in line and "needs libfoo" in line
    assert "webhook" in r.stdout


def test_allow_list(tmp_path):
    r = run_cli(["plugins"], tmp_path, {"ANNUNCIATOR_PLUGINS": "webhook"})
    lines = {x.split()[0]: x for x in r.stdout.splitlines() if x and not x.startswith(("profile", "block"))}
    assert "loaded" in lines["webhook"] and "blocked" in lines["scripting"]
