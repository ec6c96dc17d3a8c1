"""Run `snakemake --lint` on the workflow and fail on any finding that .lint-allow does not list with a reason.

Usage: python tools/lint_workflow.py [CONFIG ...] (default: config/config.yaml and config/paper.yaml, whose rules
differ). Each line of .lint-allow is `<subject glob> | <lint title> | <reason>`; a subject is `rule <name>` or
`snakefile <path relative to the repository>`. An allow-list entry that matches no finding is an error too,
so the list never keeps a stale excuse.
"""
from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOW = ROOT / ".lint-allow"
HEADER = re.compile(r"^Lints for (?:rule (?P<rule>\S+) \(line \d+, (?P<rule_file>.+)\)|snakefile (?P<file>.+)):$")
TITLE = re.compile(r"^    \* (?P<title>.+?):?$")


def findings(config: str) -> set[tuple[str, str]]:
    """(subject, title) of every finding of `snakemake --lint` on ``config``."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", config], cwd=ROOT,
                          capture_output=True, text=True)
    found, subject = set(), None
    for line in (proc.stdout + proc.stderr).splitlines():
        if match := HEADER.match(line):
            file = match["file"]
            subject = (f"rule {match['rule']}" if match["rule"]
                       else f"snakefile {Path(file).resolve().relative_to(ROOT)}")
        elif subject and (match := TITLE.match(line)):
            found.add((subject, match["title"].rstrip(".:") + "."))
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not found):
        raise SystemExit(f"snakemake --lint failed on {config} ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return found


def allowed() -> list[tuple[str, str, str]]:
    """The entries of .lint-allow: (subject glob, title, reason)."""
    entries = []
    for n, line in enumerate(ALLOW.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3 or not all(parts):
                raise SystemExit(f"{ALLOW.name}:{n}: expected '<subject glob> | <lint title> | <reason>'")
            entries.append(tuple(parts))
    return entries


def main(configs: list[str]) -> int:
    entries = allowed()
    found = set().union(*(findings(c) for c in configs))
    used, bad = set(), []
    for subject, title in sorted(found):
        match = [e for e in entries if fnmatch.fnmatchcase(subject, e[0]) and e[1] == title]
        used.update(match)
        if not match:
            bad.append(f"{subject}: {title}")
    stale = [f"{e[0]} | {e[1]}" for e in entries if e not in used]
    for line in bad:
        print(f"snakemake --lint: {line} (fix it, or list it in {ALLOW.name} with the reason)")
    for line in stale:
        print(f"{ALLOW.name}: '{line}' matches no finding: remove it")
    print(f"snakemake --lint: {len(found)} findings, {len(found) - len(bad)} allowed with a reason, {len(bad)} not")
    return 1 if bad or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["config/config.yaml", "config/paper.yaml"]))
