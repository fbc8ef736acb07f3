"""Triton Python-backend entry point of radreport.serving.backend.StreamingReportModel."""

from __future__ import annotations

import os
import site
import sys

# The backend stub embeds the interpreter's own Python and ignores PYTHONPATH. Put its
# entries first (site.addsitedir also reads .pth files, such as an editable install's), so
# the serving environment's packages win over the interpreter's: the stub is built against
# NumPy 1.x and misreads NumPy 2 arrays, so that environment pins numpy<2.
_before = list(sys.path)
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

from radreport.serving.backend import StreamingReportModel as TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
