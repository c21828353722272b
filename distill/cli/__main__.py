"""``style-distill COMMAND [options]``: the toolkit's one command, and ``python -m distill.cli``.

    style-distill teacher   stylise one image with the Gatys teacher
    style-distill targets   teacher targets for a folder of photos into a target store
    style-distill train     train a student on a target store
    style-distill compare   fidelity report: a student against its teacher
    style-distill export    export a student to ONNX, .pt2 or TorchScript, checked
    style-distill stylize   stylise images with a student or an export

``style-distill COMMAND --help`` lists a command's options. The scripts in ``scripts/``
run the same commands.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

#: Command -> the module that implements it. A command's module is imported only when it
#: runs, so that ``style-distill --help`` does not load torch and onnx.
COMMANDS = {
    "teacher": "distill.cli.teacher",
    "targets": "distill.cli.targets",
    "train": "distill.cli.train",
    "compare": "distill.cli.compare",
    "export": "distill.cli.export",
    "stylize": "distill.cli.stylize",
}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``argv[0]`` (default: the process's arguments) with the rest of ``argv`` as its options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    command, options = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"style-distill: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[command])
    module.run(options, prog=f"style-distill {command}")


if __name__ == "__main__":
    main()
