"""Train a feed-forward student on a teacher-target store (see distill/train/).

    python scripts/train_student.py --targets STORE --out RUN_DIR --student johnson --steps 2000
    python scripts/train_student.py --out RUN_DIR --resume --steps 4000      # continue a run
    torchrun --nproc_per_node 2 scripts/train_student.py --targets STORE --out RUN_DIR ...  # DDP
    python scripts/train_student.py --targets STORE --out RUN_DIR --student fast --multi-style  # every style of STORE
    python scripts/train_student.py --targets STORE --config-hash NEW --out RUN2 --add-style RUN_DIR/checkpoints/best.safetensors

Settings: TrainConfig defaults, then --config FILE.yaml (or, with --resume, the run's
saved config), then the options below, then any --set field=value (YAML value).
Numbers may be written as 1e-3 or 1e4. Every error is one ``error:`` line on stderr
(``--debug`` shows the traceback instead). Exit codes: 0 done, 1 a failure while working,
2 bad input (options, config, store, run folder), 3 non-finite loss (the last good
checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from distill.cli.console import CommandParser, ProgressBar, debugging, describe_error, process_settings, write_line
from distill.core.config import yaml_value
from distill.core.errors import ConfigError, one_line
from distill.train.config import resolve_config
from distill.train.distributed import process_group
from distill.train.loop import NonFiniteLossError, train


#: Exit code of a run stopped by a NaN/Inf loss (its last good checkpoint is kept).
NON_FINITE_EXIT = 3


def _count(text: str) -> int:
    """An integer option; ``1e4`` and ``10000`` are the same number."""
    try:
        value = yaml_value(text)
    except Exception:  # noqa: BLE001 - any text that is not YAML is not a number either
        value = text
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return value


def _number(text: str) -> float:
    """A real-number option (``1e-3``, ``0.001``)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _json_mapping(text: str) -> dict:
    """A JSON object option (``--student-kwargs``)."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"num_residual_blocks\": 3}}', got {text!r}")
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", help="target store folder (required unless resuming)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, samples")
    p.add_argument("--student", help="registered student name: timm_encoder (default), fast, johnson, ...")
    p.add_argument("--student-kwargs", type=_json_mapping, help='student options as JSON, e.g. \'{"num_residual_blocks": 3}\'')
    p.add_argument("--config", help="YAML file with TrainConfig fields")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR from checkpoints/last_state.pt (previous_state.pt when that one is broken)")
    p.add_argument("--config-hash", help="teacher config in the store (prefix ok); default: the only one")
    p.add_argument("--steps", type=_count)
    p.add_argument("--batch-size", type=_count, help="global batch, split over DDP processes")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--lr", type=_number)
    p.add_argument("--warmup-steps", type=_count)
    p.add_argument("--lr-decay-steps", type=_count, help="cosine horizon (default: --steps)")
    p.add_argument("--schedule", choices=("cosine", "constant"))
    p.add_argument("--grad-clip", type=_number, help="max global gradient norm; 0 = off")
    p.add_argument("--distill-weight", type=_number, help="0 = pure Johnson-style training on the criterion")
    p.add_argument("--distill-kind", help="comma-separated: pixel_l1, pixel_l2, ssim, feature")
    p.add_argument("--crop-size", type=_count)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=_count)
    p.add_argument("--num-workers", type=_count)
    p.add_argument("--log-interval", type=_count)
    p.add_argument("--eval-interval", type=_count)
    p.add_argument("--eval-size", type=_count)
    p.add_argument("--image-interval", type=_count)
    p.add_argument("--checkpoint-interval", type=_count)
    p.add_argument("--smooth-output", action=argparse.BooleanOptionalAction, default=None,
                   help="guided-filter the student's output with its input (photographic results); default: on for photoreal targets")
    p.add_argument("--unfreeze-step", type=_count, help="timm_encoder: train the encoder from this step on")
    p.add_argument("--multi-style", action=argparse.BooleanOptionalAction, default=None,
                   help="one student for every teacher config (style) in the store: conditional instance norm")
    p.add_argument("--add-style", dest="add_style_to", metavar="CHECKPOINT",
                   help="add the store's style (--config-hash; with --multi-style every style it lacks) to this "
                        "multi-style checkpoint, training only the new style's norms")
    p.add_argument("--loss-weights", help="loss-network weights override (pretrained, random or a file)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other TrainConfig field")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def overrides_from(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line (``--set`` values are YAML: ``1e-3`` is a number)."""
    names = ("targets", "student", "student_kwargs", "config_hash", "steps", "batch_size", "device", "lr",
             "warmup_steps", "lr_decay_steps", "schedule", "grad_clip", "distill_weight", "crop_size", "precision",
             "channels_last", "compile", "seed", "num_workers", "log_interval", "eval_interval", "eval_size",
             "image_interval", "checkpoint_interval", "unfreeze_step", "loss_weights", "smooth_output", "multi_style",
             "add_style_to")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.distill_kind is not None:
        overrides["distill_kind"] = [k.strip() for k in args.distill_kind.split(",") if k.strip()]
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[key.strip().replace("-", "_")] = yaml_value(value)
    return overrides


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = resolve_config(config_file=args.config, overrides=overrides_from(args), run_dir=args.out, resume=args.resume)
        with process_settings(), process_group(config.device), ProgressBar(desc="train", unit="step") as bar:
            result = train(config, args.out, resume=args.resume, log=_log_line,
                           progress=None if args.no_progress else bar.update_to)
    except NonFiniteLossError as error:
        if debugging():
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return NON_FINITE_EXIT
    except Exception as error:  # noqa: BLE001 - the one error policy of every command (distill.cli.console)
        if debugging():
            raise
        # A student's constructor rejects bad --student-kwargs with TypeError/ValueError: bad input.
        line, code = describe_error(error, expected=(ValueError, TypeError))
        print(f"error: {line}", file=sys.stderr)
        return code
    if result.step and result.best is not None:
        print(f"done: step {result.step}; last {result.last_checkpoint}; best {result.best_checkpoint} "
              f"(step {result.best['step']}, held-out SSIM to the teacher {result.best['ssim']:.4f})")
    return 0


def _log_line(line: str) -> None:
    """A line of the run's report on stdout, above the progress bar (on stderr) without tearing it."""
    write_line(line, file=sys.stdout)


def run(argv: Sequence[str] | None = None, *, prog: str | None = None) -> NoReturn:
    """The command: exit 0 done, 1 a failure while working, 2 bad input, 3 non-finite loss."""
    sys.exit(main(argv, prog=prog))
