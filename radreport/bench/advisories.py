"""Known vulnerabilities of a lock file's pins from PyPI's per-project JSON, where pip-audit
cannot reach its services.

pip-audit asks PyPI for ``/pypi/NAME/VERSION/json`` or asks OSV; behind some registry
proxies (this project's development machines) both are refused, and it audits nothing. The
per-project document ``/pypi/NAME/json`` often still answers. Its ``vulnerabilities`` list is
PyPI's advisory data (OSV's PyPA database) for the project's *newest* release only. So a pin
that is the newest release is audited exactly; a pin below it cannot be audited this way and
is reported as such, never as clean. Not a gate: new advisories must not break unrelated
builds.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYPI_PROJECT_URL = "https://pypi.org/pypi/{name}/json"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)

Fetch = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Advisory:
    id: str
    fixed_in: tuple[str, ...]


@dataclass(frozen=True)
class PinAudit:
    """What PyPI says about one pin: ``status`` is clean, vulnerable, not_newest or error."""

    name: str
    version: str
    status: str
    newest: str | None = None
    advisories: tuple[Advisory, ...] = field(default_factory=tuple)
    error: str | None = None


def read_pins(lock: Path) -> list[tuple[str, str]]:
    """``name==version`` pins of a requirements/lock file, in file order."""
    return _PIN.findall(lock.read_text())


def audit_pin(name: str, version: str, project: dict[str, Any]) -> PinAudit:
    """Judge one pin from its project's PyPI JSON document."""
    newest = str(project["info"]["version"])
    if newest != version:
        return PinAudit(name, version, "not_newest", newest)
    advisories = tuple(Advisory(str(v["id"]), tuple(v.get("fixed_in") or ()))
                       for v in project.get("vulnerabilities") or ())
    return PinAudit(name, version, "vulnerable" if advisories else "clean", newest, advisories)


def fetch_project(name: str, timeout: float = 30.0) -> dict[str, Any]:
    with urllib.request.urlopen(PYPI_PROJECT_URL.format(name=name), timeout=timeout) as reply:
        return dict(json.load(reply))


def audit_pins(pins: Iterable[tuple[str, str]], fetch: Fetch = fetch_project,
               workers: int = 8) -> list[PinAudit]:
    def one(pin: tuple[str, str]) -> PinAudit:
        name, version = pin
        try:
            return audit_pin(name, version, fetch(name))
        except Exception as error:  # any failure is reported, never raised
            return PinAudit(name, version, "error", error=type(error).__name__)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, pins))


def summary(audits: list[PinAudit]) -> list[str]:
    """Printable lines: the counts, then every vulnerable, unaudited and failed pin."""
    by = {s: [a for a in audits if a.status == s]
          for s in ("clean", "vulnerable", "not_newest", "error")}
    lines = [f"PyPI advisories: {len(audits)} pins; {len(by['clean']) + len(by['vulnerable'])} "
             f"audited (the newest release), {len(by['vulnerable'])} with known "
             f"vulnerabilities; {len(by['not_newest'])} pinned below the newest release "
             f"(not auditable this way); {len(by['error'])} unanswered"]
    for a in by["vulnerable"]:
        for adv in a.advisories:
            lines.append(f"  VULNERABLE {a.name} {a.version}: {adv.id} fixed in "
                         f"{', '.join(adv.fixed_in) or '-'}")
    lines += [f"  not audited: {a.name} {a.version} (newest {a.newest})"
              for a in by["not_newest"]]
    lines += [f"  no answer: {a.name} ({a.error})" for a in by["error"]]
    return lines
