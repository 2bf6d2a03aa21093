"""The ``rvcfast`` command line: convert, f0, info, backends, download, bench.

Every subcommand is one ``cmd_*`` function that takes the parsed arguments and
returns the exit status:

* ``0`` -- everything worked;
* ``1`` -- something failed: a file of a batch (each is named with its reason), a
  missing weights file, a model that cannot be loaded (one clean line, no traceback);
* ``2`` -- a usage error (bad option, parameter out of range, no inputs found).

``main(argv)`` runs the command line in-process and returns that status, so it can be
called from Python and tests as well as through the ``rvcfast`` console script or
``python -m rvcfast``. Only argparse and the standard library are used here; torch and
the models are imported when a command needs them, so ``rvcfast --help`` is instant.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ParameterError, RvcfastError

__all__ = ["main", "build_parser", "build_bench_models", "synth_test_audio"]

PROG = "rvcfast"

# exit statuses
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake found after parsing (reported like argparse's errors, status 2)."""


# ============================================================================ helpers


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` only for real defaults (not None/False), keeps epilog layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction, argparse._HelpAction))
            or "%(default)" in help_text
            or not action.option_strings
        ):
            return help_text
        return help_text + " (default: %(default)s)"


def _err(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["threshold=0.05", "pad_mode=constant"]`` -> ``{"threshold": 0.05, "pad_mode": "constant"}``."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--f0-option expects KEY=VALUE with KEY a Python name, got {pair!r}")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a plain word stays a string
        options[key] = value
    return options


def _expand_inputs(inputs: Sequence[str], recursive: bool) -> list[Path]:
    """Paths and folders -> audio file paths (folders: known audio extensions, sorted)."""
    from .batch import BatchOptions, expand_inputs

    jobs = expand_inputs(list(inputs), BatchOptions(recursive=recursive))
    return [j.path for j in jobs if j.path is not None]


def _audio_seconds(path: Path) -> float:
    """Duration from the file header (0 when it cannot be read: the batch reports why)."""
    try:
        import soundfile as sf

        info = sf.info(str(path))
        return float(info.frames) / float(info.samplerate) if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - only an estimate for the progress bar
        return 0.0


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1'...")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="compute precision (float16 needs CUDA)",
    )


# ============================================================================ convert


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert files or folders to the voice of MODEL and write them to OUT."""
    from .api import Converter
    from .batch import BatchSummary
    from .params import ConversionParams
    from .progress import BatchProgress

    if args.batch_seconds is not None and not args.batch_seconds > 0:
        raise UsageError(f"--batch-seconds must be positive, got {args.batch_seconds}")
    out = Path(args.output)
    _check_output_dir(out)
    inputs = _expand_inputs(args.inputs, args.recursive)
    if not inputs:
        raise UsageError(f"no audio files found in {', '.join(args.inputs)}" + ("" if args.recursive else " (use --recursive for sub-folders)"))
    f0_options = _parse_options(args.f0_option)
    params = dict(
        pitch=args.pitch,
        index_rate=args.index_rate,
        protect=args.protect,
        rms_mix_rate=args.rms_mix_rate,
        filter_radius=args.filter_radius,
        speaker=args.speaker,
        noise=not args.no_noise,
        seed=args.seed,
        output_sample_rate=args.sample_rate,
        keep_length=args.keep_length,
    )
    ConversionParams(**params).validate()  # a bad value is a usage error, found before loading anything
    t0 = time.perf_counter()
    conv = Converter.from_pretrained(
        args.model,
        index=args.index,
        encoder=args.encoder,
        f0=args.f0,
        f0_weights=args.f0_weights,
        device=args.device,
        dtype=args.dtype,
        f0_options=f0_options,
        allow_download=args.download,
    )
    load_seconds = time.perf_counter() - t0
    if not args.quiet:
        voc = conv.vocoder
        f0 = f", F0 {args.f0}" if voc.has_f0 else ", no F0"
        idx = f", index {conv.index.ntotal} vectors" if conv.index is not None else ""
        print(
            f"{Path(args.model).name}: {voc.version} {voc.sample_rate} Hz{f0}{idx}; device {conv.device}, "
            f"{args.dtype}; loaded in {load_seconds:.1f} s",
            file=sys.stderr,
        )
    expected = {str(p): _audio_seconds(p) for p in inputs}
    summary = BatchSummary()
    failures: list[str] = []
    bar = BatchProgress(len(inputs), sum(expected.values()), enabled=not args.quiet)
    start = time.perf_counter()
    try:
        for res in conv.iter_batch(
            [str(p) for p in inputs],
            out,
            format=args.format,
            subtype=args.subtype,
            skip_existing=args.skip_existing,
            batch_seconds=args.batch_seconds,
            **params,
        ):
            summary.add(res)
            if res.error is not None:
                reason = " ".join(res.error.split())
                failures.append(reason if res.source and res.source in reason else f"{res.source}: {reason}")
            bar.update(res, expected_seconds=expected.get(res.source or "", 0.0))
    finally:
        bar.close()
    summary.wall_seconds = time.perf_counter() - start
    if not args.quiet:
        _out(summary.table())
    return _report_failures(failures, len(inputs))


def _report_failures(failures: list[str], total: int) -> int:
    """Print each failed file with its reason; the exit status for the run."""
    if not failures:
        return EXIT_OK
    print(f"{PROG}: {len(failures)} of {total} file(s) failed:", file=sys.stderr)
    for line in failures:
        print(f"  {line}", file=sys.stderr)
    return EXIT_FAILED


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert audio files to a voice",
        description=(
            "Convert audio files (or every audio file in folders) to the voice of MODEL, an RVC/Applio\n"
            "voice model (.pth), and write one output per input into OUT. Files are batched together and\n"
            "decoding/writing overlap the model work. A file that fails is reported by name with its\n"
            "reason and the others carry on; the exit status is then 1."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast convert voice.pth song.wav -o out/\n"
            "  rvcfast convert voice.pth vocals/ -o out/ --index voice.index --pitch 12 --format flac\n"
            "  rvcfast convert voice.pth takes/ -o out/ --recursive --skip-existing --f0 crepe\n"
            "  rvcfast convert voice.pth a.wav -o out/ --encoder hubert_base.pt --f0-weights rmvpe.pt\n"
            "\n"
            "Base weights (hubert_base.pt, rmvpe.pt) are found in $RVCFAST_HOME or the user cache;\n"
            "get them with `rvcfast download`, or pass --download to fetch missing ones."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="voice model .pth (RVC WebUI or Applio, v1/v2)")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="audio files and/or folders")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder (created if missing)")
    g = p.add_argument_group("models")
    g.add_argument("--index", metavar="FILE", help="faiss .index trained with the voice (read without faiss)")
    g.add_argument("--encoder", metavar="PATH", help="hubert_base.pt or a ContentVec folder (default: $RVCFAST_HOME or the cache)")
    g.add_argument("--f0", metavar="NAME", default="rmvpe", help="F0 backend: rmvpe, crepe, crepe-tiny, fcpe, harvest, dio, pm, hybrid:a+b or a plugin (see `rvcfast backends`)")
    g.add_argument("--f0-weights", metavar="FILE", help="weights for the F0 backend (rmvpe.pt; default: $RVCFAST_HOME or the cache)")
    g.add_argument("--f0-option", metavar="KEY=VALUE", action="append", help="extra option for the F0 backend, repeatable (e.g. threshold=0.05)")
    g.add_argument("--download", action="store_true", help="download missing base weights (hubert_base.pt, rmvpe.pt) into the cache")
    c = p.add_argument_group("conversion (see docs/parameters.md)")
    c.add_argument("--pitch", type=float, metavar="SEMITONES", default=0.0, help="key shift in semitones, -48..48 (+12 = an octave up)")
    c.add_argument("--index-rate", type=float, metavar="RATE", default=0.75, help="share of retrieved index features, 0..1")
    c.add_argument("--protect", type=float, metavar="P", default=0.33, help="protection of consonants/breaths, 0..0.5 (0.5 = off)")
    c.add_argument("--rms-mix-rate", type=float, metavar="RATE", default=1.0, help="loudness envelope: 1 = the voice's own, 0 = the input's")
    c.add_argument("--filter-radius", type=int, metavar="N", default=3, help="harvest only: > 2 median-filters the F0 track")
    c.add_argument("--speaker", type=int, metavar="ID", default=0, help="speaker id of multi-speaker models")
    c.add_argument("--seed", type=int, metavar="N", help="seed for the model's noise (same seed, same output)")
    c.add_argument("--no-noise", action="store_true", help="no noise at all: deterministic output")
    c.add_argument(
        "--keep-length",
        action="store_true",
        help="length-exact output (no drift at segment joins of long files); default: the reference's length",
    )
    o = p.add_argument_group("output")
    o.add_argument("--format", default="wav", choices=["wav", "flac", "ogg"], help="output file format")
    o.add_argument("--subtype", metavar="NAME", help="soundfile subtype, e.g. PCM_16, PCM_24, FLOAT (default: the format's)")
    o.add_argument("--sample-rate", type=int, metavar="HZ", help="resample the output to HZ (default: the model's rate)")
    o.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    o.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists (resume a batch)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress or summary; failures are still reported")
    r = p.add_argument_group("runtime")
    _add_device_options(r)
    r.add_argument("--batch-seconds", type=float, metavar="S", default=None, help="seconds of audio batched through the models together (default: 8 on CPU, 120 on GPU)")
    p.set_defaults(func=cmd_convert)


# ============================================================================ f0


def _fit_frames(f0: Any, n_frames: int) -> Any:
    import numpy as np

    f0 = np.asarray(f0, dtype=np.float64).reshape(-1)
    if f0.shape[0] >= n_frames:
        return f0[:n_frames]
    return np.pad(f0, (0, n_frames - f0.shape[0]))


def cmd_f0(args: argparse.Namespace) -> int:
    """Write the F0 track of each input (CSV ``time,f0`` or ``.npy``) into OUT."""
    import numpy as np

    from .runtime import resolve_device
    from .audio import load_audio_16k
    from .f0.registry import build_f0_extractor

    out = Path(args.output)
    _check_output_dir(out)
    inputs = _expand_inputs(args.inputs, args.recursive)
    if not inputs:
        raise UsageError(f"no audio files found in {', '.join(args.inputs)}")
    extractor = build_f0_extractor(
        args.method, weights=args.f0_weights, allow_download=args.download,
        options=_parse_options(args.f0_option), device=resolve_device(args.device),
    )
    out.mkdir(parents=True, exist_ok=True)
    ext = "csv" if args.format == "csv" else "npy"
    used: set[str] = set()
    failures: list[str] = []
    for n, path in enumerate(inputs, 1):
        stem = path.stem or "audio"
        name, k = f"{stem}.{ext}", 1
        while name in used:  # two inputs with the same stem from different folders
            name, k = f"{stem}_{k}.{ext}", k + 1
        used.add(name)
        target = out / name
        t0 = time.perf_counter()
        try:
            audio = load_audio_16k(path)
            f0 = _fit_frames(extractor.extract(audio), audio.shape[0] // 160 + 1)
            tmp = target.with_name(f".{target.name}.part")
            if ext == "csv":
                with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                    fh.write("time,f0\n")
                    for i, v in enumerate(f0):
                        fh.write(f"{i * 0.01:.2f},{v:.3f}\n")
            else:
                with open(tmp, "wb") as fh:
                    np.save(fh, f0.astype(np.float32))
            os.replace(tmp, target)
        except Exception as exc:  # noqa: BLE001 - reported per file, the others carry on
            reason = str(exc) if isinstance(exc, RvcfastError) else f"{type(exc).__name__}: {exc}"
            reason = " ".join(reason.split())
            failures.append(reason if str(path) in reason else f"{path}: {reason}")
            if not args.quiet:
                short = reason[len(str(path)) + 2 :] if reason.startswith(f"{path}: ") else reason
                print(f"[{n}/{len(inputs)}] {path}: FAILED: {short}", file=sys.stderr)
            continue
        if not args.quiet:
            voiced = float((f0 > 0).mean()) if f0.size else 0.0
            print(
                f"[{n}/{len(inputs)}] {path} -> {target} ({f0.shape[0]} frames, {100 * voiced:.0f}% voiced, "
                f"{time.perf_counter() - t0:.2f} s)",
                file=sys.stderr,
            )
    return _report_failures(failures, len(inputs))


def _add_f0(sub: Any) -> None:
    p = sub.add_parser(
        "f0",
        help="extract pitch (F0) tracks",
        description=(
            "Extract the F0 track of each input with an F0 backend and write one file per input into\n"
            "OUT: CSV with a `time,f0` header (seconds, Hz; 0 = unvoiced), one row per 10 ms frame\n"
            "(len/160 + 1 frames of the 16 kHz signal), or a float32 .npy array of the F0 values.\n"
            "Inputs are decoded, mixed to mono and resampled to 16 kHz first."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast f0 song.wav -o f0/\n"
            "  rvcfast f0 vocals/ --method crepe -o f0/ --format npy\n"
            "  rvcfast f0 a.wav --method rmvpe --f0-weights rmvpe.pt -o f0/\n"
            "  rvcfast f0 a.wav --method harvest --f0-option f0_min=70 -o f0/"
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="audio files and/or folders")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder (created if missing)")
    p.add_argument("-m", "--method", default="rmvpe", metavar="NAME", help="F0 backend (see `rvcfast backends`), or hybrid:a+b")
    p.add_argument("--format", default="csv", choices=["csv", "npy"], help="output format")
    p.add_argument("--f0-weights", metavar="FILE", help="weights file for the backend (rmvpe.pt)")
    p.add_argument("--f0-option", metavar="KEY=VALUE", action="append", help="extra option for the backend, repeatable")
    p.add_argument("--download", action="store_true", help="download rmvpe.pt if it is missing")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="'auto', 'cpu', 'cuda', 'cuda:1'...")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    p.set_defaults(func=cmd_f0)


# ============================================================================ info


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _short(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_info(path: str) -> dict[str, Any]:
    import torch

    from .models.synthesizer import load_vocoder
    from .safe_load import load_torch_file

    voc = load_vocoder(path, device="cpu")
    raw = load_torch_file(path, what="voice model")
    metadata: dict[str, Any] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key in ("weight", "model", "config", "optimizer", "optimizer_state"):
                continue
            if isinstance(value, torch.Tensor):
                value = f"tensor{list(value.shape)}"
            elif isinstance(value, (dict, list, tuple)) and len(repr(value)) > 200:
                value = f"{type(value).__name__} of {len(value)}"
            metadata[str(key)] = _jsonable(value)
    n_params = sum(int(p.numel()) for p in voc.parameters())
    return {
        "path": os.fspath(path),
        "file_bytes": Path(path).stat().st_size,
        "version": voc.version,
        "sample_rate": voc.sample_rate,
        "f0": voc.has_f0,
        "speakers": voc.num_speakers,
        "feature_dim": voc.feature_dim,
        "hop_length": voc.hop_length,
        "parameters": n_params,
        "config": _jsonable(list(voc.config)),
        "metadata": metadata,
    }


def _index_info(path: str) -> dict[str, Any]:
    from .index import load_index

    idx = load_index(path)
    return {
        "path": os.fspath(path),
        "file_bytes": Path(path).stat().st_size,
        "kind": idx.kind,
        "vectors": idx.ntotal,
        "dim": idx.dim,
        "nlist": idx.nlist,
        "nprobe": idx.nprobe,
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a voice model (and optionally its index)."""
    from .progress import format_bytes

    model, index = args.model, args.index
    if index is None and model.lower().endswith(".index"):
        model, index = None, model  # `rvcfast info voice.index` describes the index alone
    report: dict[str, Any] = {}
    if model is not None:
        report["model"] = _model_info(model)
    if index is not None:
        report["index"] = _index_info(index)
        if "model" in report:
            report["index"]["matches_model"] = report["index"]["dim"] == report["model"]["feature_dim"]
    if args.json:
        _out(json.dumps(report, indent=2))
        return EXIT_OK
    rows: list[tuple[str, str]] = []
    if "model" in report:
        m = report["model"]
        rows += [
            ("model", f"{m['path']} ({format_bytes(m['file_bytes'])})"),
            ("version", m["version"]),
            ("sample rate", f"{m['sample_rate']} Hz"),
            ("pitch (F0)", "yes" if m["f0"] else "no"),
            ("speakers", str(m["speakers"])),
            ("feature dim", str(m["feature_dim"])),
            ("hop length", f"{m['hop_length']} samples"),
            ("parameters", f"{m['parameters'] / 1e6:.2f} M"),
            ("config", json.dumps(m["config"])),
            ("metadata", ", ".join(m["metadata"]) or "(none)"),
        ]
        rows += [(f"  {k}", _short(v)) for k, v in m["metadata"].items()]
    if "index" in report:
        i = report["index"]
        rows += [
            ("index", f"{i['path']} ({format_bytes(i['file_bytes'])})"),
            ("  type", "IVF-Flat" if i["kind"] == "ivf" else "Flat"),
            ("  size", f"{i['vectors']} vectors"),
            ("  dimension", str(i["dim"])),
            ("  nlist", str(i["nlist"])),
            ("  nprobe", str(i["nprobe"])),
        ]
        if "matches_model" in i:
            rows.append(("  fits model", "yes" if i["matches_model"] else f"NO: the model takes {report['model']['feature_dim']}-dim features"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        _out(f"{k:<{width}}  {v}")
    return EXIT_OK


def _add_info(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe a voice model and its index",
        description=(
            "Describe a voice model: version, sample rate, F0 or not, speakers, feature dimension,\n"
            "the 18-value config and the metadata keys present (info, epoch, author...). With --index\n"
            "(or an .index file as MODEL) also the index: size, dimension, nlist, nprobe."
        ),
        epilog="examples:\n  rvcfast info voice.pth\n  rvcfast info voice.pth --index voice.index --json",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="voice model .pth (or an .index file)")
    p.add_argument("--index", metavar="FILE", help="faiss .index to describe as well")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


# ============================================================================ backends


# Built-in backends that need an optional extra: name -> (module, extra).
_BACKEND_EXTRAS = {"pm": ("parselmouth", "pm"), "fcpe": ("torchfcpe", "fcpe")}


def cmd_backends(args: argparse.Namespace) -> int:
    """List the registered F0 backends and the package each comes from."""
    import importlib.util

    from .f0.registry import ENTRY_POINT_GROUP, available_f0_extractors

    found = available_f0_extractors()
    notes: dict[str, str] = {}
    for name, (module, extra) in _BACKEND_EXTRAS.items():
        if name in found and importlib.util.find_spec(module) is None:
            notes[name] = f"needs `pip install rvcfast[{extra}]`"
    if args.json:
        _out(json.dumps({n: {"source": s, "note": notes.get(n)} for n, s in found.items()}, indent=2))
        return EXIT_OK
    width = max([len(n) for n in found] + [4])
    _out(f"{'name':<{width}}  source")
    for name, source in found.items():
        note = f"  ({notes[name]})" if name in notes else ""
        _out(f"{name:<{width}}  {source}{note}")
    _out()
    _out("Combine two or more as hybrid:a+b (e.g. hybrid:rmvpe+crepe).")
    _out(f"Plugins register under the entry-point group {ENTRY_POINT_GROUP!r} (see docs/plugins.md).")
    return EXIT_OK


def _add_backends(sub: Any) -> None:
    p = sub.add_parser(
        "backends",
        help="list the F0 backends",
        description="List the registered F0 backends (built-in and plugins) and the package each comes from.",
        epilog="example:\n  rvcfast backends",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_backends)


# ============================================================================ download


def cmd_download(args: argparse.Namespace) -> int:
    """Download the base weights into $RVCFAST_HOME, the cache, or --dest."""
    from .progress import DownloadProgress, format_bytes
    from .weights import KNOWN_WEIGHTS, download, search_dirs

    names = sorted(KNOWN_WEIGHTS) if args.name == "all" else [args.name]
    folder = Path(args.dest).expanduser() if args.dest else search_dirs()[0]
    for name in names:
        info = KNOWN_WEIGHTS[name]
        target = folder / info.filename
        if target.is_file() and not args.force:
            _out(f"{name}: {target} is already there (use --force to download it again)")
            continue
        url = os.environ.get(f"RVCFAST_URL_{name.upper()}", info.url)
        if not args.quiet:
            print(f"{name}: {info.description}, {format_bytes(info.size)}, from {url}", file=sys.stderr)
        with DownloadProgress(info.filename, enabled=not args.quiet) as bar:
            path = download(name, target, progress=bar)
        _out(f"{name}: {path}")
    return EXIT_OK


def _add_download(sub: Any) -> None:
    from .weights import KNOWN_WEIGHTS

    p = sub.add_parser(
        "download",
        help="download base weights (rmvpe.pt, hubert_base.pt)",
        description=(
            "Download the base weights rvcfast needs besides a voice model, resumably and checked\n"
            "against their SHA-256, into $RVCFAST_HOME if set, else the user cache\n"
            "(~/.cache/rvcfast), or --dest. Prints where each file went.\n\n"
            + "\n".join(f"  {w.name:<7} {w.filename:<15} {w.description}" for w in KNOWN_WEIGHTS.values())
        ),
        epilog="examples:\n  rvcfast download\n  rvcfast download rmvpe\n  rvcfast download hubert --dest ./weights",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("name", nargs="?", default="all", choices=[*sorted(KNOWN_WEIGHTS), "all"], help="which file (default: all)")
    p.add_argument("--dest", metavar="DIR", help="folder to download into (default: $RVCFAST_HOME or the cache)")
    p.add_argument("--force", action="store_true", help="download even if the file is already there")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)


# ============================================================================ bench

# Architecture of the tiny models of `--small` (and of the examples and tests).
SMALL_VOICE = dict(inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, upsample_initial_channel=32)
SMALL_HUBERT = dict(
    layers=1, hidden=768, heads=4, ffn=64,
    conv_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
    conv_pos=15, conv_pos_groups=4,
)


def _atomic_build(target: Path, build: Any) -> Path:
    """Run ``build(tmp_path)`` and rename the result into place (no half-written models)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def build_bench_models(folder: str | os.PathLike[str], small: bool = False, *, log: Any = None) -> dict[str, Path]:
    """Random-weight models in the real file formats, built once and reused.

    Full size (default): a v2 40 kHz voice with F0 (RVC's architecture, ~55 MB),
    ``hubert_base.pt`` in the fairseq layout (~190 MB), ``rmvpe.pt`` (~181 MB) and an
    IVF-Flat index of 20,000 x 768 vectors. ``small=True``: the same formats with tiny
    widths (a few MB) for quick checks. Files that already exist are reused.
    Returns ``{"model", "index", "encoder", "f0_weights"}`` paths.
    """
    import numpy as np

    from .index import save_index
    from .testing import save_random_hubert, save_random_rmvpe, save_random_voice_model

    root = Path(folder).expanduser() / ("small" if small else "full")
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": root / "voice_v2_40k.pth",
        "index": root / "voice_v2_40k.index",
        "encoder": root / "hubert_base.pt",
        "f0_weights": root / "rmvpe.pt",
    }
    n_vectors = 2000 if small else 20000

    def index(tmp: Path) -> None:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((64, 768)).astype(np.float32)
        vectors = centres[rng.integers(0, 64, n_vectors)] + 0.3 * rng.standard_normal((n_vectors, 768)).astype(np.float32)
        save_index(tmp, vectors)

    builders = {
        "model": lambda tmp: save_random_voice_model(tmp, "v2", 40000, True, **(SMALL_VOICE if small else {})),
        "encoder": lambda tmp: save_random_hubert(tmp, "fairseq", **(SMALL_HUBERT if small else {})),
        "f0_weights": lambda tmp: save_random_rmvpe(tmp, full_size=not small),
        "index": index,
    }
    for key, path in paths.items():
        if not path.is_file():
            if log:
                log(f"building {path.name} ...")
            _atomic_build(path, builders[key])
    return paths


def synth_test_audio(seconds: float, rate: int = 44100, seed: int = 0) -> Any:
    """A sung-like test signal: a harmonic tone with vibrato, glides and syllable gating, plus a little noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    base = float(rng.choice([110.0, 147.0, 196.0, 262.0, 330.0]))
    glide = 2.0 ** (rng.uniform(-0.25, 0.25) * np.sin(2 * np.pi * t / max(seconds, 1.0)))
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi))
    f0 = base * glide * vibrato
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 9) if k * base < rate / 2 * 0.9)
    gate = 0.55 + 0.45 * np.sin(2 * np.pi * 2.0 * t) ** 2  # syllable-like loudness
    x = 0.25 * voice * gate + 0.003 * rng.standard_normal(n)
    return x.astype(np.float32)


def cmd_bench(args: argparse.Namespace) -> int:
    """Build (or reuse) models, synthesise test clips, run convert_batch and print the stage table."""
    import soundfile as sf

    from .api import Converter
    from .batch import BatchSummary
    from .weights import cache_dir

    if args.files < 1 or not args.seconds > 0:
        raise UsageError("--files must be >= 1 and --seconds > 0")
    paths: dict[str, Any] = {k: getattr(args, k) for k in ("model", "index", "encoder", "f0_weights")}
    if args.model is None:  # random models; any real file given replaces its random counterpart
        folder = Path(args.models).expanduser() if args.models else cache_dir() / "bench-models"
        print(f"models: random {'small' if args.small else 'full-size'} models in {folder}", file=sys.stderr)
        built = build_bench_models(folder, small=args.small, log=lambda m: print(m, file=sys.stderr))
        paths = {k: v if v is not None else built[k] for k, v in paths.items()}
    t0 = time.perf_counter()
    weights = paths["f0_weights"] if "rmvpe" in args.f0.lower() else None
    conv = Converter.from_pretrained(
        paths["model"], index=paths["index"], encoder=paths["encoder"], f0=args.f0,
        f0_weights=weights, device=args.device, dtype=args.dtype,
    )
    load_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="rvcfast-bench-") as tmp:
        clips = []
        for i in range(args.files):
            p = Path(tmp) / "in" / f"clip{i:03d}.wav"
            p.parent.mkdir(exist_ok=True)
            sf.write(p, synth_test_audio(args.seconds, 44100, seed=i), 44100, subtype="PCM_16")
            clips.append(str(p))
        if not args.no_warmup:
            conv.convert(synth_test_audio(1.0, 16000, seed=999), 16000)
        summary = BatchSummary()
        start = time.perf_counter()
        results = conv.convert_batch(clips, Path(tmp) / "out", batch_seconds=args.batch_seconds)
        summary.wall_seconds = time.perf_counter() - start
    for r in results:
        summary.add(r)
    bad = [r for r in results if not r.ok]
    _out(f"device {conv.device}, {args.dtype}, F0 {args.f0}; {args.files} clips x {args.seconds:g} s; models loaded in {load_seconds:.1f} s")
    _out(summary.table())
    speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds else float("nan")
    _out(f"speed: {speed:.2f}x real-time (real-time factor {1 / speed if speed else math.nan:.4f})")
    for r in bad:
        _err(f"{r.source}: {r.error}")
    return EXIT_FAILED if bad else EXIT_OK


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure conversion speed",
        description=(
            "Measure conversion speed: synthesise N test clips of S seconds (harmonic tones with\n"
            "vibrato), convert them with convert_batch and print the stage table and the real-time\n"
            "factor (wall seconds per second of audio; below 1 is faster than real time).\n\n"
            "Without --model, random-weight models in the real formats are built once and cached in\n"
            "--models: a full-size v2 40 kHz voice, hubert_base.pt (fairseq), rmvpe.pt and a\n"
            "20000 x 768 index (about 500 MB); --index/--encoder/--f0-weights replace their random\n"
            "counterparts. Random weights compute exactly like trained ones, so the timings are\n"
            "those of real models."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast bench\n"
            "  rvcfast bench --small --files 2 --seconds 2          # quick check\n"
            "  rvcfast bench --files 16 --seconds 30 --device cuda --dtype float16\n"
            "  rvcfast bench --model voice.pth --index voice.index --encoder hubert_base.pt --f0-weights rmvpe.pt"
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--files", type=int, metavar="N", default=8, help="number of test clips")
    p.add_argument("--seconds", type=float, metavar="S", default=10.0, help="length of each clip in seconds")
    p.add_argument("--models", metavar="DIR", help="where random models are built and cached (default: <cache>/bench-models)")
    p.add_argument("--small", action="store_true", help="tiny random models (a quick check, not a benchmark)")
    p.add_argument("--model", metavar="FILE", help="a real voice model .pth instead of the random one")
    p.add_argument("--index", metavar="FILE", help="a real .index")
    p.add_argument("--encoder", metavar="PATH", help="a real hubert_base.pt / ContentVec folder")
    p.add_argument("--f0-weights", metavar="FILE", help="a real rmvpe.pt")
    p.add_argument("--f0", metavar="NAME", default="rmvpe", help="F0 backend")
    _add_device_options(p)
    p.add_argument("--batch-seconds", type=float, metavar="S", default=None, help="seconds of audio batched together (default: 8 on CPU, 120 on GPU)")
    p.add_argument("--no-warmup", action="store_true", help="do not run a 1 s warm-up conversion first")
    p.set_defaults(func=cmd_bench)


# ============================================================================ main


def build_parser() -> argparse.ArgumentParser:
    """The ``rvcfast`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "rvcfast: fast, faithful RVC voice conversion.\n\n"
            "Loads RVC/Applio voice models (.pth), their faiss .index, hubert_base.pt and rmvpe.pt\n"
            "into pure PyTorch, and converts many files at once."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast download                                   # fetch rmvpe.pt and hubert_base.pt\n"
            "  rvcfast convert voice.pth song.wav -o out/ --pitch 12\n"
            "  rvcfast f0 song.wav -o f0/ --method rmvpe\n"
            "  rvcfast info voice.pth --index voice.index\n"
            "\n"
            "`rvcfast COMMAND --help` explains each command. Exit status: 0 success, 1 failure\n"
            "(the failing files are named), 2 usage error."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add in (_add_convert, _add_f0, _add_info, _add_backends, _add_download, _add_bench):
        add(sub)
    parser._rvcfast_subparsers = sub  # type: ignore[attr-defined]
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    sub = getattr(parser, "_rvcfast_subparsers", None)
    if sub is not None and command in sub.choices:
        return sub.choices[command]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse usage error (already printed)
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except (UsageError, ParameterError) as exc:
        if args.traceback:
            raise
        sp = _subparser(parser, args.command)
        sp.print_usage(sys.stderr)
        print(f"{sp.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except RvcfastError as exc:
        if args.traceback:
            raise
        _err(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
