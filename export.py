"""Export a checkpoint's embedding network to ONNX or TorchScript.

    python export.py --checkpoint RUN/checkpoints/best.pt --format onnx --output model.onnx
    python export.py --checkpoint RUN/checkpoints/best.pt --format torchscript --output model.pt

The exported network takes `images`, a float32 batch N x 3 x crop x crop that is ALREADY PREPROCESSED
(resized, centre-cropped, normalised with the recorded mean/std, in the recorded channel order; N is
dynamic), and returns `embeddings`, N x D float32 rows of unit L2 norm (cosine similarity = dot product),
equal to `config.checkpoints.load_model(checkpoint).embed` of the same images. The preprocessing is recorded
with the model: ONNX `metadata_props` (keys resolution, resize, crop, mean, std, channel_order,
interpolation, embed_dim, arch, input_range), TorchScript the extra file `preprocessing.json` (read it with
`torch.jit.load(path, _extra_files={"preprocessing.json": ""})`) holding the same keys.
Exit codes: 0 success, 2 user error (one line on stderr), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utilities.errors import UserError, report_user_error

FORMATS = ("onnx", "torchscript")
EXTRA_FILE = "preprocessing.json"
OPSET = 18


def build_parser() -> argparse.ArgumentParser:
    from config.command_line import script_parser

    parser = script_parser(
        "export.py",
        "Export the embedding network of a checkpoint. Input: a float32 N x 3 x crop x crop batch, already "
        "preprocessed (resize, centre crop, mean/std normalisation, channel order: recorded in the file); output: "
        "N x D L2-normalised embeddings. N is dynamic.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint of this project, or its run folder (checkpoints/best.pt)"
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--output", required=True, help="file to write (.onnx / .pt)")
    return parser


class NormalizedEmbedder(nn.Module):
    """The embedding network followed by L2 normalisation (float32), as `load_model(...).embed` computes."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.network(images).float(), dim=-1)


def export_metadata(model: Any) -> dict[str, str]:
    """The preprocessing and identity of a loaded model as string key/values."""
    spec = model.preprocessing
    return {
        "resolution": str(spec.resolution),
        "resize": str(spec.resize),
        "crop": str(spec.crop),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "channel_order": spec.channel_order,
        "interpolation": spec.interpolation,
        "input_range": "RGB pixel values / 255, then (x - mean) / std per channel",
        "embed_dim": str(model.embed_dim),
        "arch": str(model.cfg.arch),
        "output": "L2-normalised embeddings",
    }


def _example(model: Any) -> torch.Tensor:
    crop = model.preprocessing.crop
    return torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))


def export_onnx(model: Any, output: Path) -> None:
    """ONNX (opset 18) with a dynamic batch axis and the preprocessing in `metadata_props`."""
    import onnx

    module = NormalizedEmbedder(model.network).eval()
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (_example(model),),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in export_metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(output))


def export_torchscript(model: Any, output: Path) -> None:
    """A traced TorchScript module; `preprocessing.json` in its extra files."""
    module = NormalizedEmbedder(model.network).eval()
    extra = {EXTRA_FILE: json.dumps(export_metadata(model), indent=1)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice; the format still loads
        traced = torch.jit.trace(module, (_example(model),), check_trace=False)
        torch.jit.save(traced, str(output), _extra_files=extra)


def main(argv: list[str] | None = None) -> int:
    try:
        from config.command_line import parse_script

        args = parse_script(build_parser(), argv)
        from config.checkpoints import load_model

        output = Path(args.output)
        if output.is_dir():
            raise UserError(f"--output: {output} is a folder; give a file name")
        if args.format == "onnx":
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError:
                needed = "--format onnx needs the onnx and onnxscript packages: pip install onnx onnxscript"
                raise UserError(needed) from None
        model = load_model(args.checkpoint, device="cpu")
        output.parent.mkdir(parents=True, exist_ok=True)
        if args.format == "onnx":
            export_onnx(model, output)
        else:
            export_torchscript(model, output)
        spec = model.preprocessing
        print(
            f"{args.format} model written to {output}: input N x 3 x {spec.crop} x {spec.crop} float32 "
            f"(resize {spec.resize}, centre crop {spec.crop}, mean {list(spec.mean)}, std {list(spec.std)}, "
            f"{spec.channel_order}), output N x {model.embed_dim} L2-normalised embeddings"
        )
    except UserError as error:
        return report_user_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
