"""The PyPI-advisories fallback: which pins it may call audited, and what it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radreport.bench.advisories import audit_pin, audit_pins, read_pins, summary

LOCKS = Path(__file__).parents[3] / "deploy" / "requirements"


def project(newest: str, vulns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"info": {"version": newest}, "vulnerabilities": vulns or []}


def test_reads_every_pin_of_the_runtime_lock() -> None:
    pins = read_pins(LOCKS / "runtime.txt")
    lines = [line for line in (LOCKS / "runtime.txt").read_text().splitlines()
             if "==" in line and not line.lstrip().startswith("#")]
    assert len(pins) == len(lines) > 50
    assert all(version and not version.endswith("\\") for _, version in pins)
    assert "fastapi" in {name for name, _ in pins}


def test_a_pin_below_the_newest_release_is_never_called_clean() -> None:
    # The newest release's advisories say nothing about an older pin, even when empty.
    audit = audit_pin("numpy", "2.4.6", project("2.5.5"))
    assert audit.status == "not_newest" and audit.newest == "2.5.5" and not audit.advisories


def test_the_newest_release_is_audited_from_its_advisories() -> None:
    assert audit_pin("jinja2", "3.1.6", project("3.1.6")).status == "clean"
    vulnerable = audit_pin("x", "1.0", project("1.0", [
        {"id": "PYSEC-2026-1", "fixed_in": ["1.0.1"]}, {"id": "GHSA-abcd", "fixed_in": None}]))
    assert vulnerable.status == "vulnerable"
    assert [(a.id, a.fixed_in) for a in vulnerable.advisories] == [
        ("PYSEC-2026-1", ("1.0.1",)), ("GHSA-abcd", ())]


def test_a_failed_answer_is_reported_not_raised() -> None:
    def fetch(name: str) -> dict[str, Any]:
        if name == "gone":
            raise OSError("refused")
        return project("1.0")

    audits = audit_pins([("ok", "1.0"), ("gone", "2.0")], fetch)
    assert [a.status for a in audits] == ["clean", "error"]
    lines = summary(audits)
    assert lines[0].startswith("PyPI advisories: 2 pins; 1 audited")
    assert "1 unanswered" in lines[0] and "  no answer: gone (OSError)" in lines


def test_summary_lists_vulnerable_and_unaudited_pins() -> None:
    audits = [audit_pin("a", "1", project("1")), audit_pin("b", "1", project("2")),
              audit_pin("c", "3", project("3", [{"id": "CVE-1", "fixed_in": ["3.1"]}]))]
    lines = summary(audits)
    assert "1 with known vulnerabilities" in lines[0]
    assert "  VULNERABLE c 3: CVE-1 fixed in 3.1" in lines
    assert "  not audited: b 1 (newest 2)" in lines

