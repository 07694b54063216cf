"""Train DADA (or a plain proxy loss): python main.py --config configs/cub200.yaml [--key value ...]

Under torchrun (`torchrun --nproc_per_node N main.py ...`) every process trains its slice of the global batch.
`--resume auto` continues <save_path>/<dataset>/<save_name> when it has checkpoints/last.pt, else starts there.
Exit codes: 0 success (also a finished run started again with --resume auto), 2 a user error (configuration,
arguments, data), 1 an unexpected failure; stopped by a signal: 128 + its number, i.e. 130 SIGINT,
138 SIGUSR1, 143 SIGTERM (the position inside the epoch is in checkpoints/last.pt: continue with --resume).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from utilities.errors import UserError, report_user_error


def dry_run(cfg, check_images: bool) -> int:
    """Validate the data, print the split summary as JSON (and any unreadable image), train nothing."""
    from architectures import input_spec_for
    from datasets import build_datasets, describe
    from datasets import check_images as check

    splits = build_datasets(cfg, input_spec_for(cfg.arch))
    print(json.dumps(describe(splits, cfg.dataset, cfg.samples_per_class)))
    if check_images:
        failures = check(splits, workers=cfg.workers)
        for failure in failures:
            print(failure, file=sys.stderr)
        if failures:
            raise UserError(f"{len(failures)} image(s) could not be read (listed above)")
    return 0


def resolve_resume_config(resume: str, argv: Sequence[str]):
    """On --resume the stored configuration is the base; YAML and command-line keys still override it.

    Returns the configuration, the run options and the loaded checkpoint (read once, handed to the trainer).
    """
    from config.command_line import parse_command_line
    from engine.checkpoint import load_checkpoint

    state = load_checkpoint(resume)
    cfg, options = parse_command_line(argv, __doc__, base=state["config"])
    return cfg, options, state


def auto_resume(cfg) -> tuple[Path, str | None]:
    """`--resume auto`: the run folder `<save_path>/<dataset>/<save_name>` and its `last.pt` if there is one."""
    if not cfg.save_name:
        raise UserError("--resume auto needs an explicit --save_name (the run folder it continues or starts)")
    folder = Path(cfg.save_path) / cfg.dataset / cfg.save_name
    last = folder / "checkpoints" / "last.pt"
    return folder, str(last) if last.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    from config.command_line import parse_command_line

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, options = parse_command_line(argv, __doc__)
        resume, resume_state, folder = options.resume, None, None
        auto = resume == "auto" or (not resume and cfg.resume == "auto")
        if auto:
            folder, resume = auto_resume(cfg)
        if resume:
            cfg, options, resume_state = resolve_resume_config(resume, argv)
            if auto and resume_state["epoch"] >= cfg.epochs and "in_epoch" not in resume_state:
                print(f"{folder}: the run already finished its {cfg.epochs} epochs; nothing to do")
                return 0
        if options.dry_run:
            return dry_run(cfg, options.check_images)
        from config.checkpoints import resume_point
        from engine.interrupts import TrainingStopped
        from engine.trainer import TrainingDiverged, train

        try:
            continued = resume_point(resume, cfg, resume_state) if resume else None
            train(cfg, resume=continued, folder=folder)
        except TrainingDiverged as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except TrainingStopped as stop:
            if os.environ.get("RANK", "0") == "0":
                again = "the same command" if auto else f"python main.py --resume {Path(stop.checkpoint).parent.parent}"
                print(f"{stop}; continue with {again}", file=sys.stderr, flush=True)
            return stop.exit_code
        return 0
    except UserError as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the last saved position is in <run>/checkpoints/last.pt (use --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
