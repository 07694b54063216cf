"""Train DADA (or a plain proxy loss): python main.py --config configs/cub200.yaml [--key value ...]

Under torchrun (`torchrun --nproc_per_node N main.py ...`) every process trains its slice of the global batch.
Exit codes: 0 success, 2 a user error (configuration, arguments, data), 1 an unexpected failure,
130 interrupted (the last completed epoch is in checkpoints/last.pt).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    from config.command_line import parse_command_line

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, options = parse_command_line(argv, __doc__)
        resume_state = None
        if options.resume:
            cfg, options, resume_state = resolve_resume_config(options.resume, argv)
        if options.dry_run:
            return dry_run(cfg, options.check_images)
        from engine.trainer import TrainingDiverged, train

        try:
            train(cfg, resume=options.resume, resume_state=resume_state)
        except TrainingDiverged as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    except UserError as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the last completed epoch is saved in <run>/checkpoints/last.pt (use --resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
