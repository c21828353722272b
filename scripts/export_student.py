#!/usr/bin/env python
"""Export a student checkpoint to ONNX, .pt2 or TorchScript, checked (see distill/cli/export.py).

The same as ``style-distill export``; kept so that ``python scripts/export_student.py`` works from a checkout.
"""

from distill.cli.export import build_parser, main, run  # noqa: F401  (this script's API, as before)

if __name__ == "__main__":
    run()
