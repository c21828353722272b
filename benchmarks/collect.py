#!/usr/bin/env python
"""Assemble benchmarks/RESULTS.md from the files the benchmark scripts wrote in results/.

Each benchmark writes its own results/<name>_<device>.md with the machine it ran on;
this only puts them under one roof, in pipeline order:

    python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
ORDER = ("stylization", "photoreal", "fidelity", "multistyle", "reliability", "teacher", "targets", "students", "train", "export")

HEADER = """# Benchmark results

Written by `python benchmarks/collect.py` from the files in `benchmarks/results/`, each
produced by the benchmark script named in its section (rerun a script to refresh its
numbers). Every section names the machine it ran on. CPU figures come from a 2-core
machine that was shared with other work while they ran, so they are upper bounds on
time; ratios measured in one run (batched vs loop, fast vs johnson) are the more
reliable numbers. GPU sections (marked cuda) ran on one NVIDIA H100 through
`bash benchmarks/run_cuda.sh`; their small-image timings are launch-bound (batch 4 at
128-256 px keeps an H100 mostly idle), so they rank settings rather than give the
card's throughput.
"""


def main() -> None:
    files = sorted((HERE / "results").glob("*.md"), key=lambda p: (_rank(p), p.name))
    parts = [HEADER]
    for path in files:
        body = path.read_text().strip()
        # Demote the file's own headings one level under this document's title.
        body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
        parts.append(f"{body}\n\n_Source: `benchmarks/results/{path.name}`._")
    (HERE / "RESULTS.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(files)} result file(s)")


def _rank(path: Path) -> int:
    for index, prefix in enumerate(ORDER):
        if path.name.startswith(prefix):
            return index
    return len(ORDER)


if __name__ == "__main__":
    main()
