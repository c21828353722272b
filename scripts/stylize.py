#!/usr/bin/env python
"""Stylise images with a trained student or an export (see distill/cli/stylize.py).

The same as ``style-distill stylize``; kept so that ``python scripts/stylize.py`` works from a checkout.
"""

from distill.cli.stylize import build_parser, main, run  # noqa: F401  (this script's API, as before)

if __name__ == "__main__":
    run()
