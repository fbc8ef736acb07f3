"""radreport: grounded chest X-ray report drafting.

This package holds what is not a runtime service: the command line, the synthetic
phantom data engine, dataset loaders and (later) the PyTorch model. Runtime services
live under ``services/`` and never import torch.
"""

__version__ = "0.1.0"
