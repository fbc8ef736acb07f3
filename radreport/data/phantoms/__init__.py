"""Synthetic chest X-ray phantoms: ``generate_study(seed, size)`` and its exporters."""

from radreport.data.phantoms.generator import generate_study
from radreport.data.phantoms.study import Finding, PhantomStudy, Sentence

__all__ = ["Finding", "PhantomStudy", "Sentence", "generate_study"]
