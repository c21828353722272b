#!/usr/bin/env python
"""Stylise one image with the Gatys L-BFGS teacher (see distill/cli/teacher.py).

The same as ``style-distill teacher``; kept so that ``python scripts/stylize_gatys.py`` works from a checkout.
"""

from distill.cli.teacher import build_parser, main, run  # noqa: F401  (this script's API, as before)

if __name__ == "__main__":
    run()
