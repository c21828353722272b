"""Run the scripts in ``scripts/`` many times without paying torch's import each time.

A real ``python scripts/X.py`` spends 3-6 s (on 2 shared cores) importing torch, onnx and
the toolkit before it looks at its arguments, so a suite of many bad inputs x every script
would take minutes. This helper is started once as its own process (``python
tests/script_runner.py``); it imports every command's module, then forks one child per
request. Each child is a separate process with its own stdout and stderr files, its own
working folder and arguments, and runs the script file as ``python`` would
(``runpy.run_path(script, run_name="__main__")``); its exit status is the script's: the
``SystemExit`` code, or 1 with a traceback on stderr for an uncaught exception, as the
interpreter does.

What a fork cannot show is output printed while the modules are imported (the children
inherit the imports); ``tests/test_reliability.py`` therefore also runs each script once as
a real process.

Protocol: one JSON request per line on stdin,
``{"script", "args", "cwd", "stdout", "stderr", "env"}`` (``stdout``/``stderr``: files to
write), answered by one JSON line ``{"rc": int}`` on stdout.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The modules every script runs (imported once, before any fork).
COMMAND_MODULES = ("distill.cli.teacher", "distill.cli.targets", "distill.cli.compare", "distill.cli.export", "distill.cli.stylize")


def _exit_code(error: SystemExit) -> int:
    """The status the interpreter gives a process that ends with ``error``."""
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(request: dict) -> None:
    """Run one script in this (forked) process and end it with the script's exit status."""
    os.chdir(request["cwd"])
    os.environ.update(request.get("env") or {})
    for fd, name, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        handle = os.open(name, mode, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    script = str(ROOT / "scripts" / request["script"])
    sys.argv = [script, *request["args"]]
    code = 1
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as error:
        code = _exit_code(error)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc}), flush=True)


@dataclass
class Result:
    """What one script run left: its exit status and what it printed."""

    rc: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class ScriptRunner:
    """The client: starts the forking process and runs scripts through it (one at a time)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
            text=True, cwd=ROOT,
        )
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError("the script runner did not start (see its stderr)")
        self._scratch = tempfile.TemporaryDirectory(prefix="script-runner-")

    def run(self, script: str, *args: object, cwd: str | os.PathLike, env: dict[str, str] | None = None) -> Result:
        """Run ``scripts/<script>`` with ``args`` in ``cwd``; returns its :class:`Result`."""
        out, err = Path(self._scratch.name) / "stdout", Path(self._scratch.name) / "stderr"
        request = {"script": script, "args": [str(a) for a in args], "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
                   "env": env or {}}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the script runner ended unexpectedly")
        return Result(json.loads(reply)["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._scratch.cleanup()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    serve()
