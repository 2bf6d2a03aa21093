"""``rvcfast convert``: files and folders to a voice, through :meth:`rvcfast.Converter.iter_batch`."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._common import (
    PROG,
    BatchStopped,
    HelpFormatter,
    Terminated,
    UsageError,
    add_conversion_options,
    add_device_options,
    check_f0_name,
    check_inputs_exist,
    check_model_files,
    check_output_dir,
    check_params,
    out,
    params_from_args,
    parse_options,
    report_failures,
    report_warnings,
    say,
    user_path,
)
from .batch_options import (
    BatchReport,
    add_batch_options,
    batch_options,
    check_not_on_ray,
    check_report_path,
    kbps,
)
from .scale import add_scale_options, object_storage_args, planned_inputs, planned_jobs


def _audio_seconds(path: Path) -> float:
    """Duration from the file header (0 when it cannot be read: the batch reports why)."""
    from ..audio import audio_info

    try:
        return audio_info(path)[0]
    except Exception:  # noqa: BLE001 - only an estimate for the progress bar
        return 0.0


def _describe_load(conv: Any, model: str, args: argparse.Namespace, seconds: float, threads: int, workers: int) -> str:
    voc = conv.vocoder
    f0 = f", F0 {args.f0}" if voc.has_f0 else ", no F0"
    idx = f", index {conv.index.ntotal} vectors" if conv.index is not None else ""
    side_by_side = f", {workers} compute workers" if workers > 1 else ""
    return (
        f"{Path(model).name}: {voc.version} {voc.sample_rate} Hz{f0}{idx}; device {conv.device}, "
        f"{str(conv.dtype).replace('torch.', '')}, {threads} thread{'s' if threads != 1 else ''}{side_by_side}; "
        f"loaded in {seconds:.1f} s"
    )


def _check_local(args: argparse.Namespace) -> None:
    """A usage error for the options of --ray runs on a local run."""
    ray_only = [flag for flag, given in (
        ("--workers", args.workers is not None), ("--gpus-per-worker", bool(args.gpus_per_worker)),
        ("--manifest", args.manifest is not None),
    ) if given]
    remote = object_storage_args(args)
    if remote:  # a local run reads and writes local paths: "s3:/bkt/in" was "file does not exist"
        raise UsageError(f"{remote[0]}: files on object storage need --ray (a local run reads and writes local paths)")
    if ray_only:  # accepted and silently ignored before: a local run has none of them
        raise UsageError(
            f"{' and '.join(ray_only)} {'is' if len(ray_only) == 1 else 'are'} for --ray runs"
            " (locally, --compute-workers sets the files converted side by side)"
        )
    if args.batch_seconds is not None and not (math.isfinite(args.batch_seconds) and args.batch_seconds > 0):
        raise UsageError(f"--batch-seconds must be a positive number of seconds, got {args.batch_seconds}")


def _stem(model: str) -> str:
    """A voice's name: its model file's stem."""
    return Path(model).stem


def _voices(args: argparse.Namespace, name: Callable[[str], str] = _stem) -> list[tuple[str, str | None]]:
    """``(model, index)`` of MODEL and of each ``--voice MODEL[,INDEX]``; a usage error when two
    voices would take the same ``name`` (the model file's stem; with ``--server``, the voice id),
    or when ``--name-template`` cannot tell them apart."""
    voices: list[tuple[str, str | None]] = [(args.model, args.index)]
    for text in args.voice or []:
        model, _, index = text.partition(",")
        if not model.strip() or (_ and not index.strip()):
            raise UsageError(f"--voice {text!r}: expected MODEL or MODEL,INDEX")
        voices.append((user_path(model.strip()), user_path(index.strip()) if index.strip() else None))
    if len(voices) > 1:
        from ..batch_inputs import _fold

        names = [name(m) for m, _ in voices]
        folded = [_fold(n) for n in names]  # Bob.pth and bob.pth: one output folder on Windows and macOS
        twice = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
        if twice:
            raise UsageError(f"two voices are named {twice[0]!r} (the model file's stem): outputs would collide; rename one file")
        if args.name_template is not None and "{voice" not in args.name_template:
            raise UsageError(
                f"--name-template {args.name_template!r} has no {{voice}} field: with --voice every voice's outputs "
                "need their own names (default with --voice: '{voice}/{stem}')"
            )
    return voices


def _voice_pitches(
    args: argparse.Namespace, voices: list[tuple[str, str | None]], name: Callable[[str], str] = _stem
) -> dict[str, float]:
    """``--voice-pitch NAME=SEMITONES`` as ``{name: semitones}``; a usage error for a name that is
    no voice's (``name`` of its model), a name given twice, or a key shift out of range."""
    names = [name(m) for m, _ in voices]
    pitches: dict[str, float] = {}
    for text in args.voice_pitch or []:
        voice, sep, value = text.rpartition("=")
        try:
            semitones = float(value)
        except ValueError:
            semitones = None
        if not sep or not voice or semitones is None:
            raise UsageError(f"--voice-pitch {text!r}: expected VOICE=SEMITONES (e.g. {names[-1]}=-12)")
        if voice not in names:
            raise UsageError(f"--voice-pitch {text!r}: no voice is named {voice!r} (the voices: {', '.join(names)})")
        if voice in pitches:
            raise UsageError(f"--voice-pitch gives voice {voice!r} two keys")
        try:
            check_params({**params_from_args(args), "pitch": semitones})
        except UsageError as exc:  # the key is --voice-pitch's, not --pitch's
            raise UsageError(str(exc).replace("--pitch: ", f"--voice-pitch {voice}: ", 1)) from None
        pitches[voice] = semitones
    return pitches


def _results(
    convs: list[Any], args: argparse.Namespace, batch: dict[str, Any], pitches: dict[str, float], bar: Any
) -> Any:
    """The batch's results: one voice through its own batch, several through :func:`rvcfast.iter_voices`
    (``pitches``: a key of its own per voice name); ``bar`` follows the audio inside the files."""
    kwargs = dict(
        format=args.format, subtype=args.subtype, recursive=args.recursive, skip_existing=args.skip_existing,
        batch_seconds=args.batch_seconds, compute_workers=args.compute_workers, audio_progress=bar.advance,
        **batch, **params_from_args(args),
    )
    if len(convs) == 1:
        kwargs.update({"pitch": pitches[convs[0].engine.name]} if pitches else {})
        return convs[0].iter_batch(list(args.inputs), Path(args.output), **kwargs)
    from ..voices import iter_voices

    extra = [{"pitch": pitches[c.engine.name]} if c.engine.name in pitches else {} for c in convs]
    return iter_voices(convs, list(args.inputs), Path(args.output), voice_params=extra, **kwargs)


def _run(
    results: Callable[[Any], Iterator[Any]], voices: list[str], args: argparse.Namespace, inputs: list[Path],
    batch: dict[str, Any], report: BatchReport,
) -> int:
    """The batch itself (``results(bar)``, to the ``voices`` named): progress, summary, warnings,
    failures; the exit status."""
    from ..batch import BatchSummary
    from ..errors import ParameterError, RvcfastError
    from ..progress import BatchProgress

    expected = {str(p): _audio_seconds(p) for p in inputs}
    summary = BatchSummary()
    failures: list[str] = []
    warnings: list[str] = []
    total = len(inputs) * len(voices)
    bar = BatchProgress(total, sum(expected.values()) * len(voices), enabled=not args.quiet)
    start = time.perf_counter()
    not_reached = 0
    try:
        for res in results(bar):
            summary.add(res)
            report.add(res)
            if res.voice is None or res.voice == voices[0]:  # each input's warnings once
                warnings.extend(res.warnings)
            if res.error is not None:
                reason = " ".join(res.error.split())
                reason = reason if res.source and res.source in reason else f"{res.source}: {reason}"
                failures.append(reason if res.voice is None else f"{reason} (voice {res.voice})")
            bar.update(res, expected_seconds=expected.get(res.source or "", 0.0))
    except RvcfastError as exc:  # --on-error stop (or a lost server): the files before the failed one are written
        stops = batch["on_error"] == "stop" or isinstance(exc, BatchStopped)
        why = exc.why if isinstance(exc, BatchStopped) else "--on-error stop"
        failed = None if not stops or isinstance(exc, ParameterError) else report.stopped(str(exc), why)
        if failed is None:
            raise  # not a file's failure: the command ends with it (status 1), and no report
        bar.update(name=failed, error=str(exc), expected_seconds=expected.get(failed, 0.0))  # its [k/n] line
        summary.files += 1
        summary.failed += 1
        failures.append(" ".join(str(exc).split()))  # it names its file
        not_reached = total - summary.files
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: what was done is reported, then the command ends
        bar.close()
        _report_interrupted(report, "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C")
        raise
    finally:
        bar.close()
    summary.wall_seconds = time.perf_counter() - start
    if not args.quiet:
        out(summary.table())
    if not args.quiet:  # -q: failures alone (--report keeps each file's warnings; --strict fails them)
        report_warnings(warnings)
    status = report_failures(failures, total, named_above=not args.quiet, report=report.path)
    try:  # after the summary and the failures: a full disk must not hide them
        report.write()
    except OSError as exc:
        say(f"{PROG}: error: --report {report.path} cannot be written: {exc.strerror or exc}")
        status = 1
    if not_reached:
        what = "file(s) after it not converted" if len(voices) == 1 else "conversion(s) (input, voice) after it not done"
        say(f"{PROG}: {not_reached} {what} ({why})")
    return status


def _report_interrupted(report: BatchReport, how: str) -> None:
    """Write ``--report`` for a run stopped by ``how``: the inputs done, and the others as not converted."""
    if report.path is None:
        return
    left = report.interrupted(how)
    try:
        report.write()
    except OSError as exc:
        say(f"{PROG}: error: --report {report.path} cannot be written: {exc.strerror or exc}")
        return
    say(f"{PROG}: --report {report.path} written: {len(report.rows) - left} input(s) done, {left} not done")


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert files or folders to the voice of MODEL and write them to OUT."""
    if args.server is not None:  # converted by a running `rvcfast serve`
        return _convert_remote(args)
    if args.api_key is not None:  # accepted and silently ignored before
        raise UsageError("--api-key is for --server runs (the key of the server the files are sent to)")
    args.f0 = args.f0 or "rmvpe"
    if args.compute_workers is not None and args.compute_workers < 1:
        raise UsageError(f"--compute-workers must be at least 1, got {args.compute_workers}")
    if args.ray is not None:  # the same job on a Ray cluster
        from .scale import cmd_convert_ray

        if args.compute_workers is not None:
            raise UsageError("--compute-workers is for local runs; on Ray, --workers sets the number of model workers")
        check_not_on_ray(args)
        voices = _voices(args)  # MODEL and each --voice: one job, every input decoded and analysed once
        return cmd_convert_ray(args, voices, _voice_pitches(args, voices))
    _check_local(args)
    voices = _voices(args)
    pitches = _voice_pitches(args, voices)
    batch = batch_options(args)  # bad batch options: usage errors, before anything is read or loaded
    if len(voices) > 1 and args.name_template is None:
        batch["name_template"] = "{voice}/{stem}"  # a folder per voice
    report_path = check_report_path(args.report)
    from ..api import Converter

    check_output_dir(args.output, "-o")
    inputs = planned_inputs(args, batch["name_template"])  # what the batch below converts (it expands the folders itself)
    check_params(params_from_args(args))  # a bad value is a usage error, found before loading anything
    check_f0_name("--f0", args.f0, parse_options(args.f0_option), args.f0_weights is not None)
    # then a missing file (status 1), named now rather than after loading the models
    for model, index in voices:
        check_model_files(model, index)
    check_inputs_exist(args.inputs)
    report = BatchReport(report_path, [str(p) for p in inputs], [Path(m).stem for m, _ in voices] if len(voices) > 1 else None)
    report.check_writable()
    from ..batch import BatchOptions, compute_workers, usable_workers
    from ..tuning import apply_threads

    convs, threads = [], 0
    for model, index in voices:
        t0 = time.perf_counter()
        conv = Converter.from_pretrained(
            model, index=index, encoder=args.encoder, f0=args.f0, f0_weights=args.f0_weights, device=args.device,
            dtype=args.dtype, f0_options=parse_options(args.f0_option), allow_download=args.download,
        )
        try:
            check_params(params_from_args(args), conv.engine.vocoder)  # a --speaker this voice lacks, with the flag
        except UsageError as exc:
            if len(voices) == 1:
                raise
            raise UsageError(f"{exc} (voice {conv.engine.name!r}, {model})") from None
        convs.append(conv)
        if len(convs) == 1:
            threads = apply_threads(conv.engine.profile)  # this process is ours: use the tuned thread count
        if not args.quiet:
            requested = compute_workers(conv.engine, BatchOptions(compute_workers=args.compute_workers))
            workers = usable_workers(requested, len(inputs), conv.device.type)
            say(_describe_load(conv, model, args, time.perf_counter() - t0, threads, workers))
    return _run(
        lambda bar: _results(convs, args, batch, pitches, bar), [c.engine.name for c in convs], args, inputs, batch, report
    )


def _convert_remote(args: argparse.Namespace) -> int:
    """``--server URL``: the batch planned, named and reported here, converted by the server
    (MODEL and each ``--voice``: the server's voices, by id)."""
    from ..errors import RvcfastError
    from .remote import (
        Server,
        api_key,
        check_outputs,
        check_remote_args,
        iter_remote,
        plan_voices,
        request_fields,
        voice_id,
    )

    check_remote_args(args)
    remote = object_storage_args(args)
    if remote:
        raise UsageError(f"{remote[0]}: with --server the inputs and OUT are local paths (object storage needs --ray)")
    voices = _voices(args, voice_id)  # as a local run checks them, named as the server names them
    pitches = _voice_pitches(args, voices, voice_id)
    names = [voice_id(m) for m, _ in voices]
    batch = batch_options(args)
    if len(voices) > 1 and args.name_template is None:
        batch["name_template"] = "{voice}/{stem}"  # a folder per voice
    report_path = check_report_path(args.report)
    check_output_dir(args.output, "-o")
    listed = planned_jobs(args, batch["name_template"])
    check_params(params_from_args(args))
    check_inputs_exist(args.inputs)
    inputs = [j.path for j in listed]
    report = BatchReport(report_path, [str(p) for p in inputs], names if len(names) > 1 else None)
    report.check_writable()
    server = Server(args.server, api_key(args))
    served = server.voices()
    missing = [n for n in names if n not in served]
    if missing:
        raise RvcfastError(f"the server at {server.url} has no voice {missing[0]!r} (its voices: {', '.join(served) or 'none'})")
    check_outputs(args, {n: served[n] for n in names}, pitches)
    fields = {n: [("voice", n), *request_fields(args, pitches.get(n))] for n in names}
    planned = [(v, job, fields[v or names[0]]) for v, job in plan_voices(args, listed, batch["name_template"], names, pitches)]
    # --on-error stop: one file at a time, so that nothing after the failed one is written
    workers = 1 if batch["on_error"] == "stop" else (args.workers or 2)
    if not args.quiet:
        say(f"{', '.join(names)}: converted by the server at {server.url}, {workers} request{'s' if workers != 1 else ''} at a time")
    converted = iter_remote(server, planned, workers, args.skip_existing)

    def results(bar: Any) -> Iterator[Any]:
        for res in converted:
            if res.error is not None and batch["on_error"] == "stop":
                raise RvcfastError(res.error)
            yield res

    try:
        return _run(results, names, args, inputs, batch, report)
    finally:
        converted.close()  # stopped (Ctrl-C, --on-error stop): nothing more is sent, the jobs under way are cancelled


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert audio files to a voice",
        description=(
            "Convert audio files (or every audio file in folders) to the voice of MODEL, an RVC/Applio\n"
            "voice model (.pth), and write one output per input into OUT. Files are batched together and\n"
            "decoding/writing overlap the model work. A file that fails is reported by name with its\n"
            "reason and the others carry on (--on-error stop: nothing after it is written); the exit\n"
            "status is then 1. --report writes one JSON line per input when the batch ends. An INPUT\n"
            "(or MODEL, --index) that does not exist stops the run at once, before anything is loaded\n"
            "(status 1); audio is not read from standard input ('-'). Damaged or odd inputs (a\n"
            "truncated file, clipping...) are listed as warnings; --strict makes them failures."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast convert voice.pth song.wav -o out/\n"
            "  rvcfast convert voice.pth vocals/ -o out/ --index voice.index --pitch 12 --format flac\n"
            "  rvcfast convert voice.pth take.wav -o out/ --format m4a --bitrate 128\n"
            "  rvcfast convert voice.pth takes/ -o out/ --recursive --skip-existing --f0 crepe\n"
            "  rvcfast convert voice.pth a.wav -o out/ --encoder hubert_base.pt --f0-weights rmvpe.pt\n"
            "  rvcfast convert voice.pth a.m4a -o out/ --autotune 0.8 --effect reverb:room_size=0.3 --clean 0.5\n"
            "  rvcfast convert alice.pth song.wav -o out/ --voice bob.pth --voice carol.pth,carol.index --voice-pitch bob=-12\n"
            "  rvcfast convert voice.pth speakers/ -o out/ --recursive --name-template '{parent}/{stem}' --report run.jsonl\n"
            "  rvcfast convert voice.pth takes/ -o out/ --pitch 2 --server http://127.0.0.1:8000   # a running `rvcfast serve`\n"
            "\n"
            "Base weights (hubert_base.pt, rmvpe.pt) are found in $RVCFAST_HOME or the user cache;\n"
            "get them with `rvcfast download`, or pass --download to fetch missing ones."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", type=user_path, help="voice model .pth (RVC WebUI or Applio, v1/v2)")
    p.add_argument("inputs", metavar="INPUT", nargs="+", type=user_path, help="audio files and/or folders")
    p.add_argument("-o", "--output", metavar="OUT", required=True, type=user_path, help="output folder (created if missing)")
    g = p.add_argument_group("models")
    g.add_argument("--index", metavar="FILE", type=user_path, help="faiss .index trained with the voice (read without faiss)")
    g.add_argument(
        "--voice", metavar="MODEL[,INDEX]", action="append", default=None,
        help="another voice to convert every input to, with its index after a comma; repeatable. Each input's "
        "F0 and content features are computed once for all the voices (with MODEL's F0 settings); outputs go "
        "to OUT/<voice>/ (a --name-template must use {voice}); with --server a voice id of the server, without an index",
    )
    g.add_argument(
        "--voice-pitch", metavar="VOICE=SEMITONES", action="append", default=None,
        help="a key shift of its own for one voice, named by its model file's stem (MODEL's or a --voice's; with --server its id), "
        "instead of --pitch; repeatable (e.g. --voice-pitch bob=-12)",
    )
    g.add_argument("--encoder", metavar="PATH", type=user_path, help="hubert_base.pt or a ContentVec folder (default: $RVCFAST_HOME or the cache)")
    g.add_argument("--f0", metavar="NAME", default=None, help="F0 backend: rmvpe (default; with --server: the server's), crepe, crepe-tiny, fcpe, harvest, dio, pm, swift, hybrid:a+b or a plugin (see `rvcfast backends`)")
    g.add_argument("--f0-weights", metavar="FILE", type=user_path, help="weights for the F0 backend (rmvpe.pt; default: $RVCFAST_HOME or the cache)")
    g.add_argument("--f0-option", metavar="KEY=VALUE", action="append", help="extra option for the F0 backend, repeatable (e.g. threshold=0.05)")
    g.add_argument("--download", action="store_true", help="download missing base weights (hubert_base.pt, rmvpe.pt) into $RVCFAST_HOME when set, else the cache")
    add_conversion_options(p.add_argument_group("conversion (see docs/parameters.md)"))
    o = p.add_argument_group("output")
    o.add_argument(
        "--format", default="wav", choices=["wav", "flac", "ogg", "mp3", "m4a"],
        help="output file format (mp3 and m4a at the nearest rate their codec takes, e.g. 44.1 kHz for 40 kHz voices; "
        'm4a is AAC, through PyAV: pip install "rvcfast[av]")',
    )
    o.add_argument(
        "--subtype", metavar="NAME",
        help="soundfile subtype, e.g. PCM_16, PCM_24, FLOAT; OPUS for ogg; ALAC for a lossless m4a (default: the format's)",
    )
    o.add_argument(
        "--bitrate", type=kbps, metavar="KBPS", default=None,
        help="bitrate of a lossy output in kbit/s: mp3 8..320 (MPEG bitrates, constant), ogg --subtype OPUS 6..256, "
        "m4a 16..320 (default: the encoder's)",
    )
    o.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    o.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists (resume a batch)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress, summary or input warnings (--report keeps them); failures are still reported")
    add_batch_options(p.add_argument_group("batch (local runs)"))
    r = p.add_argument_group("runtime")
    add_device_options(r)
    r.add_argument("--batch-seconds", type=float, metavar="S", default=None, help="seconds of audio batched through the models together (default: the `rvcfast tune` profile's, else 8 on CPU, 120 on GPU)")
    r.add_argument(
        "--compute-workers", type=int, metavar="N", default=None,
        help="files converted side by side, each with 1/N of the threads (default: `rvcfast tune`'s choice, else 1)",
    )
    add_scale_options(p.add_argument_group("scale out (Ray; pip install \"rvcfast[ray]\"; see docs/scale-out.md)"))
    s = p.add_argument_group("through a running server (`rvcfast serve`; see docs/cli.md)")
    s.add_argument(
        "--server", metavar="URL", default=None,
        help="convert through the rvcfast server at URL (e.g. http://127.0.0.1:8000): MODEL is its voice id (a .pth "
        "path stands for its stem), the server's models, device and F0 weights apply; --workers requests at a time (default 2)",
    )
    s.add_argument("--api-key", metavar="KEY", default=None, help="with --server: the server's API key (default: $RVCFAST_API_KEY)")
    p.set_defaults(func=cmd_convert)
