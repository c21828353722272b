#!/usr/bin/env python
"""Train a feed-forward student on a teacher-target store (see distill/cli/train.py).

The same as ``style-distill train``; kept so that ``python scripts/train_student.py`` works from a checkout.
"""

from distill.cli.train import build_parser, main, overrides_from, run  # noqa: F401  (this script's API, as before)

if __name__ == "__main__":
    run()
