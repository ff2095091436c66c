"""Writes docs/settings.md: every field of coordd.config.Settings with its environment variable,
default and the comment above it in config.py. `--check` fails when the file is out of date
(tests/platform/test_settings_doc.py runs it)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "server" / "coordd" / "config.py"
OUT = ROOT / "docs" / "settings.md"

HEADER = """# Settings

Generated from `server/coordd/config.py` by `python3 tools/settings_doc.py` (a test fails when it is
out of date). Precedence: defaults < the TOML file (`coordd serve --config coordd.toml`, keys as in the
first column) < `COORDD_*` environment variables. Durations are seconds (`_s`) or milliseconds (`_ms`).

| setting | environment | default | meaning |
| --- | --- | --- | --- |
"""


def rows() -> list[tuple[str, str, str]]:
    source = CONFIG.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: list[tuple[str, str, str]] = []
    previous_end, previous_leading = -1, ""
    for node in settings.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        default = ast.get_source_segment(source, node.value) if node.value is not None else ""
        comments = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            comments.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        leading = " ".join(comments)
        line = lines[node.lineno - 1]
        if "#" in line.split("=", 1)[-1]:
            comments.append(line.split("#", 1)[1].strip())
        meaning = " ".join(comments).replace("|", "\\|")
        if not meaning and previous_leading and previous_end == node.lineno - 1:
            meaning = "(with the setting above) " + previous_leading.replace("|", "\\|")
        else:
            previous_leading = leading
        previous_end = node.end_lineno or node.lineno
        out.append((name, str(default).replace("|", "\\|"), meaning))
    return out


def render() -> str:
    body = "".join(f"| `{n}` | `COORDD_{n.upper()}` | `{d}` | {m} |\n" for n, d, m in rows())
    return HEADER + body


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/settings.md is out of date: run python3 tools/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(rows())} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
