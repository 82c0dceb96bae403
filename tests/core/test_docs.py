"""The plugin documentation lists every hook with its signature, and nothing else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hookspecs() -> dict[str, str]:
    tree = ast.parse((ROOT / "annunciator" / "core" / "hookspecs.py").read_text())
    return {node.name: f"{node.name}({', '.join(a.arg for a in node.args.args)})"
            for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("annunciator_")}


def test_every_hook_is_documented_with_its_signature():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    specs = _hookspecs()
    assert len(specs) >= 12
    missing = [sig for sig in specs.values() if f"| `{sig}` |" not in doc]
    assert missing == [], f"docs/plugins.md lacks these hooks (or shows another signature): {missing}"
    listed = set(re.findall(r"^\| `(annunciator_\w+)\(", doc, re.M))
    assert listed == set(specs), f"docs/plugins.md lists hooks that do not exist: {sorted(listed - set(specs))}"
