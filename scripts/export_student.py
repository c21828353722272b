#!/usr/bin/env python
"""Export a student checkpoint to ONNX, torch.export (.pt2) or TorchScript, checked against eager PyTorch.

    python scripts/export_student.py --checkpoint fast.safetensors --format onnx --out fast.onnx
    python scripts/export_student.py --checkpoint fast.safetensors --format pt2 --out fast_fp16.pt2 --dtype fp16

Prints the max absolute difference to the eager student at each check size; exit 1 (and no
output file) when one is above the tolerance (fp32 1e-4, fp16 1e-2, bf16 5e-2).
"""

from __future__ import annotations

from distill.cli import run_main
from distill.export import main

if __name__ == "__main__":
    run_main(main)
