#!/usr/bin/env python
"""Reliability figures, counted from the reliability test suites as they run now.

Runs ``tests/test_reliability.py`` (bad inputs x every command but training) and
``tests/test_train_reliability.py`` (broken states, foreign run folders, changed targets,
SIGKILL at several moments of training) with pytest, reads the outcome of every case
from its JUnit XML and writes ``benchmarks/results/reliability.md``: bad inputs tried per
script and how many gave one line with nothing written or overwritten, kill points
survived, hostile pickles executed. Nothing here is typed in: a case that fails shows up
as a failure in the table.

    python benchmarks/bench_reliability.py
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITES = (
    "tests/test_reliability.py",
    "tests/test_train_reliability.py",
    "tests/test_store.py::test_kill_9_then_rerun_completes_without_recomputing",
    "tests/test_store.py::test_kill_9_at_several_moments_then_rerun_gives_the_uninterrupted_store",
)
#: Test functions whose parameters are "script: case" bad inputs.
BAD_INPUT_TEST = "test_a_bad_input_is_one_line_and_changes_nothing"
KILL_TEST = "test_sigkill_then_resume_gives_the_uninterrupted_weights"
GENERATION_KILL_TESTS = ("test_kill_9_then_rerun_completes_without_recomputing",
                         "test_kill_9_at_several_moments_then_rerun_gives_the_uninterrupted_store")
#: Training cases: test function -> what it tries (one row per parameter).
TRAIN_CASES = {
    "test_resume_with_a_broken_state_is_one_line_naming_it": "--resume with a broken last_state.pt",
    "test_both_states_broken_is_one_line_naming_both": "--resume with both states broken",
    "test_new_run_refuses_a_folder_that_is_not_a_run_before_any_work": "--out holds something that is not a run",
    "test_a_run_that_fails_early_leaves_no_half_made_folder": "a run that fails early leaves no folder",
    "test_a_target_changed_after_generation_is_refused": "a target changed after generation",
    "test_torn_manifest_lines_are_reported_in_one_line": "torn manifest lines",
    "test_config_errors_name_the_key_the_value_and_the_type": "config errors name key, value and type",
}
#: Cases that hand the code a pickle which would run code if it were unpickled.
PICKLE_CASE = re.compile(r"pickle|hostile", re.IGNORECASE)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                   f"--junitxml={report}", *SUITES]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=False)
        cases = list(read_cases(report))
    out = HERE / "results" / "reliability.md"
    out.write_text(render(cases))
    print(f"wrote {out}")


def read_cases(report: Path):
    """(test function, parameter or '', outcome) for every case in a JUnit XML report."""
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        function, _, parameter = name.partition("[")
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}[tag]
        yield function, parameter.rstrip("]"), outcome


def render(cases: list[tuple[str, str, str]]) -> str:
    per_script: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for function, parameter, outcome in cases:
        if function == BAD_INPUT_TEST:
            per_script[parameter.split(":", 1)[0] + ".py"][outcome] += 1
    train = collections.Counter()
    for function, _, outcome in cases:
        if function in TRAIN_CASES:
            train[outcome] += 1
    kills = collections.Counter(outcome for function, _, outcome in cases if function == KILL_TEST)
    generation_kills = collections.Counter(outcome for function, _, outcome in cases if function in GENERATION_KILL_TESTS)
    pickles = collections.Counter(outcome for function, parameter, outcome in cases
                                  if PICKLE_CASE.search(function + parameter))
    failed = [f"{function}[{parameter}]" if parameter else function for function, parameter, outcome in cases
              if outcome == "failed"]
    total = collections.Counter(outcome for _, _, outcome in cases)
    lines = [
        "# Reliability (bad input and faults)",
        "",
        f"Counted by `python benchmarks/bench_reliability.py` from the outcomes of {', '.join(f'`{s}`' for s in SUITES)} "
        f"on {date.today().isoformat()}: {total['passed']} cases passed, {total['failed']} failed, {total['skipped']} "
        "skipped (skips: an unwritable folder cannot be made when the tests run as root).",
        "",
        "A bad-input case passes when the command exits 2 (bad input) with exactly one `error:` line, no traceback, "
        "and every file in the test area (inputs, someone else's folders, earlier outputs) hashes the same before and after.",
        "",
        "| script | bad inputs tried | one line, nothing written or overwritten | failed | skipped |",
        "|---|---:|---:|---:|---:|",
    ]
    for script, counts in sorted(per_script.items()):
        lines.append(f"| {script} | {sum(counts.values())} | {counts['passed']} | {counts['failed']} | {counts['skipped']} |")
    lines.append(f"| train_student.py | {sum(train.values())} | {train['passed']} | {train['failed']} | {train['skipped']} |")
    lines += [
        "",
        "Training cases: " + "; ".join(TRAIN_CASES.values()) + ".",
        "",
        f"- SIGKILL during training, then `--resume`: {kills['passed']} of {sum(kills.values())} kill points give weights "
        "and losses bit-identical to an uninterrupted run (during a step, right after a checkpoint, while a state is "
        "half-written, between the two renames of a state save).",
        f"- SIGKILL during target generation, then the same command: {generation_kills['passed']} of "
        f"{sum(generation_kills.values())} kill points complete the store without recomputing finished targets "
        "(after the first target; while the first batch is optimised and after two targets, which also give a store "
        "byte-identical to an uninterrupted run).",
        f"- Hostile pickles offered (as checkpoint, model, training state): {sum(pickles.values())} cases; "
        f"{pickles['failed']} failed (each is refused before anything is unpickled; the training-state cases also "
        "check that the marker file their pickle would create never appears).",
        f"- Files overwritten: {sum(c['failed'] for c in per_script.values()) + train['failed']} "
        "(a failed bad-input case is the only way one can be).",
    ]
    if failed:
        lines += ["", "Failed cases:", "", *[f"- `{name}`" for name in failed]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
