#!/usr/bin/env python
"""Gatys teacher targets for a folder of content images (see distill/cli/targets.py).

The same as ``style-distill targets``; kept so that ``python scripts/generate_targets.py`` works from a checkout.
"""

from distill.cli.targets import build_parser, main, run, teacher_config_from_args  # noqa: F401  (this script's API, as before)

if __name__ == "__main__":
    run()
