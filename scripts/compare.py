#!/usr/bin/env python
"""Teacher vs student: a fidelity report for a trained student (see distill/cli/compare.py).

The same as ``style-distill compare``; kept so that ``python scripts/compare.py`` works from a checkout.
"""

from distill.cli.compare import build_parser, main, run  # noqa: F401  (this script's API, as before)

if __name__ == "__main__":
    run()
