"""Every encoding the exporter can choose passes David Clunie's ``dciodvfy`` without errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, all_options, write_study_dicom
from radreport.data.phantoms.study import PhantomStudy

pytestmark = pytest.mark.integration

IOD_NAMES = {"CR": "CRImage", "DX": "DXImageForPresentation"}


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    """The validator must be there: CI installs it (Debian package ``dicom3tools``)."""
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.fail("dciodvfy not found on PATH; install dicom3tools (apt-get install dicom3tools)")
    return path


@pytest.fixture(scope="module")
def studies() -> dict[str, PhantomStudy]:
    """A PA and an AP study (the view changes DX codes, geometry and positioner)."""
    found = {"PA": generate_study(11, 256), "AP": generate_study(9, 256)}
    assert {view: s.view for view, s in found.items()} == {"PA": "PA", "AP": "AP"}
    return found


def case_id(options: DicomOptions) -> str:
    return (f"{options.modality}-{options.photometric}-{options.bits_stored}bit-"
            f"{options.transfer_syntax}")


@pytest.mark.parametrize("options", list(all_options()), ids=case_id)
def test_dciodvfy_finds_no_errors(
    dciodvfy: str, studies: dict[str, PhantomStudy], options: DicomOptions, tmp_path: Path
) -> None:
    # Bit depths take turns over the views, so each IOD x polarity x syntax sees both.
    view = "PA" if options.bits_stored in (10, 14) else "AP"
    path = write_study_dicom(studies[view], tmp_path, options)
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    output = done.stdout + done.stderr
    print(output)
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, f"dciodvfy on {case_id(options)}:\n{output}"
    assert IOD_NAMES[options.modality] in output, output
