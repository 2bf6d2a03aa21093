"""``rvcfast export-onnx``: export a voice model to ONNX (through :func:`rvcfast.onnx_export.export_onnx`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, HelpFormatter, UsageError, check_model_files, check_output_dir, out, user_path


def _output_path(model: Path, output: str | None) -> Path:
    """``-o``: a file, or a folder -- an existing one, or a name ending in ``/`` (created) -- to
    write the file named after the model into; default: the model's name with ``.onnx`` beside
    it. Never the model file itself."""
    if output is None:
        target = model.with_suffix(".onnx")
    else:
        target = Path(output).expanduser()
        folder = output.endswith(tuple(s for s in (os.sep, os.altsep) if s))  # Path drops the slash
        if folder or target.is_dir():
            target = target / (model.stem + ".onnx")
    if target.exists() and os.path.samefile(target, model):
        raise UsageError(f"output {target} is the voice model itself; name another file with -o")
    if target.suffix.lower() != ".onnx":
        raise UsageError(f"output {target} does not end in .onnx")
    check_output_dir(target.parent)  # a file in the way: a usage error now, not after the export and its check
    return target


def cmd_export(args: argparse.Namespace) -> int:
    """Export the voice model, verify it (unless --no-verify) and print what was written."""
    check_model_files(args.model, None)
    model = Path(args.model)
    from ..onnx_export import check_not_onnx, export_onnx

    check_not_onnx(model)  # before the output: its default, voice.onnx, would be the model itself
    target = _output_path(model, args.output)

    if not args.quiet:
        print(f"exporting {model} to {target} ...", file=sys.stderr)
    options = {} if args.opset is None else {"opset": args.opset}
    report = export_onnx(
        model, target, noise=not args.deterministic, verify=not args.no_verify, interface=args.interface, **options
    )
    meta = report.metadata
    out(f"{report.path}")
    if not args.quiet:
        f0 = "f0" if meta["f0"] == "1" else "no f0"
        print(
            f"  {meta['version']}, {meta['sample_rate']} Hz, {f0}, {meta['vocoder']}; opset {report.opset}, "
            f"{report.bytes / 1e6:.1f} MB, exported in {report.export_seconds:.1f} s",
            file=sys.stderr,
        )
        print(f"  inputs: {', '.join(report.inputs)}; output: audio [1, 1, frames * {meta['hop_length']}]", file=sys.stderr)
        why = "" if args.deterministic else ", nothing in this model draws any"
        noise = "drawn in the graph" if report.noise else f"none (deterministic graph{why})"
        print(f"  noise: {noise}", file=sys.stderr)
        v = report.verification
        if v is not None:
            print(
                f"  verified against torch at {v.frames} frames: max abs error {v.max_abs_error:.2g}, "
                f"SNR {v.snr_db:.0f} dB",
                file=sys.stderr,
            )
    return EXIT_OK


def add_parser(sub: Any) -> None:
    # nothing heavy is imported here (``rvcfast --help`` stays instant): the opset default is the library's
    p = sub.add_parser(
        "export-onnx",
        aliases=["export"],
        help="export a voice model (.pth) to ONNX, any input length",
        description=(
            "Export an RVC / Applio voice model to an ONNX file that runs at any length and matches\n"
            "torch. The graph has RVC's inputs (phone, phone_lengths, pitch, pitchf, ds, rnd; no\n"
            "pitch/pitchf for models without f0) and one output, audio [1, 1, frames * hop], so RVC's\n"
            "onnx_inference.py can run it; --interface w-okada names them as w-okada's voice-changer\n"
            "feeds them (feats, p_len, pitch, pitchf, sid). The file is checked in onnxruntime against\n"
            "torch at another length before it is written (docs/onnx.md)."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast export-onnx voice.pth                      # writes voice.onnx beside it\n"
            "  rvcfast export-onnx voice.pth -o out/voice.onnx --deterministic\n"
            "  rvcfast export-onnx voice.pth -o models/ --interface w-okada"
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="VOICE.pth", type=user_path, help="the voice model to export")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT.onnx",
        help="file or folder to write (a new folder: end it in /; default: the model's name with .onnx beside it)",
    )
    p.add_argument("--opset", type=int, choices=range(13, 21), metavar="N", help="ONNX opset, 13-20 (default: 17)")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="no random draws in the graph (by default the NSF source noise is drawn in it, as in RVC's export)",
    )
    p.add_argument("--interface", choices=["rvc", "w-okada"], default="rvc", help="input names of the graph")
    p.add_argument("--no-verify", action="store_true", help="do not compare the graph with torch in onnxruntime")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the path written")
    p.set_defaults(func=cmd_export)
