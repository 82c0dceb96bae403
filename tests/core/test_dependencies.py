"""Every third-party package annunciator imports is declared in setup.cfg: a fresh install must
not work only because something else happened to pull the package in (dateutil did)."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# imported only by the test harness or guarded by ImportError (optional speed-ups)
OPTIONAL = {"pytest": "test", "uvloop": "speed"}


def _declared() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def names(text: str) -> set[str]:
        return {re.split(r"[<>=!\[ ;]", line.strip())[0].lower().replace("_", "-")
                for line in text.splitlines() if line.strip()}

    out = {"": names(cfg["options"]["install_requires"])}
    for extra, text in cfg["options.extras_require"].items():
        out[extra] = names(text)
    return out


def _imported() -> set[str]:
    found = set()
    for f in (ROOT / "annunciator").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "annunciator"}


def test_every_imported_package_is_declared():
    declared = _declared()
    dists = packages_distributions()
    missing = []
    for module in sorted(_imported()):
        candidates = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        where = declared.get(OPTIONAL.get(module, ""), set())
        if not candidates & where:
            missing.append(f"{module} (from {', '.join(sorted(candidates))})")
    assert missing == [], f"imported but not declared in setup.cfg: {missing}"
