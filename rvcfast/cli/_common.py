"""What every ``rvcfast`` subcommand shares: exit statuses, errors, help layout, option groups."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ParameterError, RvcfastError

PROG = "rvcfast"

# exit statuses
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class BatchStopped(RvcfastError):
    """A failure that ends a batch whatever ``--on-error`` says (the server it is sent to is gone):
    its message names the file it stopped at; ``why`` says why the files after it were not
    converted (in the report and the closing line, as ``--on-error stop`` is)."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class UsageError(Exception):
    """A command-line mistake found after parsing (reported like argparse's errors, status 2).

    ``usage=False``: the message alone, without the command's usage lines (a port in use is
    not a mistake in how the command was written)."""

    def __init__(self, message: str, *, usage: bool = True) -> None:
        super().__init__(message)
        self.usage = usage


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` only for real defaults (not None/False), keeps epilog layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._VersionAction, argparse._HelpAction))
            or "%(default)" in help_text
            or not action.option_strings
        ):
            return help_text
        return help_text + " (default: %(default)s)"


def user_path(text: str) -> str:
    """A path option or argument with ``~`` expanded (argparse ``type``): the shell leaves a quoted
    ``"~/out"`` as it is, and Windows' cmd and PowerShell never expand it (a folder named ``~``)."""
    return os.path.expanduser(text)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job, ``kill``) in the console script: raised in the main
    thread, so a command ends as it does on Ctrl-C (workers stopped, temporary files removed,
    outputs already written kept) with status 143."""


def say(text: str) -> None:
    """Print a line on standard error (messages, warnings, failures). A standard error that
    cannot be written any more (its reader went away) is not a reason to stop a command
    halfway: the line is dropped, and the command still finishes (a batch writes its report)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # EPIPE, EIO, a closed stream
        pass


def err(message: str) -> None:
    say(f"{PROG}: error: {' '.join(str(message).split())}")


def out(text: str = "") -> None:
    """Print a line of the command's output on standard output, at once.

    Flushed line by line: redirected to a file or a pipe Python buffers standard output, and a
    log of both streams (``> log 2>&1``, ``| tee``) would otherwise get the summary after the
    failures printed on standard error, or at exit. A reader that went away costs no traceback
    and does not stop the command halfway (a batch still writes its ``--report``): standard
    output is pointed at the null device, and :func:`rvcfast.cli.main`, seeing it changed,
    ends with status 1."""
    try:
        print(text, file=sys.stdout, flush=True)
    except BrokenPipeError:
        discard_stdout()


def stdout_identity() -> tuple[int, int] | None:
    """What standard output's descriptor points at (device, inode), to tell afterwards whether
    :func:`discard_stdout` replaced it; ``None`` for a stream without a descriptor."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return st.st_dev, st.st_ino


def discard_stdout() -> None:
    """Point standard output at the null device (its reader went away): the final flush at exit
    must not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a replaced stdout without a descriptor
        pass


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
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


def check_f0_name(option: str, spec: str, options: dict[str, Any] | None = None, weights: bool = False) -> None:
    """A usage error (status 2) when ``spec`` names no installed F0 backend (nor a combination
    of them, ``hybrid:a+b``), when the backend takes none of ``options``' names
    (``--f0-option``), or, with ``weights`` (``--f0-weights`` given), when it takes no weights
    file; found before any model is loaded (only a backend given options or weights is imported)."""
    from ..f0.registry import available_f0_extractors, check_f0_options, check_f0_weights, parse_hybrid

    try:
        members = parse_hybrid(spec)
    except ParameterError as exc:
        raise UsageError(f"{option}: {exc}") from None
    known = available_f0_extractors()
    unknown = [m for m in (members or [spec.strip().lower()]) if m not in known]
    if unknown:
        raise UsageError(
            f"{option}: unknown F0 backend {', '.join(map(repr, unknown))}; available: {', '.join(known) or '(none)'}"
            " (or hybrid:a+b to combine several; `rvcfast backends` lists them)"
        )
    if options:
        try:
            check_f0_options(spec, options)
        except ParameterError as exc:  # a backend that cannot load is reported when it is built
            raise UsageError(f"--f0-option: {exc}") from None
    if weights:
        try:
            check_f0_weights(spec)
        except ParameterError as exc:
            raise UsageError(f"--f0-weights: {exc}") from None


def expand_inputs(inputs: Sequence[str], recursive: bool) -> list[Path]:
    """Paths and folders -> audio file paths (folders: known audio extensions, sorted)."""
    from ..batch import BatchOptions
    from ..batch import expand_inputs as expand

    jobs = expand(list(inputs), BatchOptions(recursive=recursive))
    return [j.path for j in jobs if j.path is not None]


#: Endings of the files the commands write into OUT: an OUT that does not exist yet and ends so
#: names a file by mistake (``-o out.wav``), which would have become a folder of that name.
_FILE_ENDINGS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif", ".csv", ".npy"})


def check_output_dir(folder: str | Path, option: str | None = None) -> None:
    """A usage error when the output folder ``folder`` is a file, or cannot be created because
    the nearest part of its path that exists is a file (``-o notes.txt/out``); found before
    any model is loaded, not as one failed write per file afterwards. With ``option`` (``-o``),
    also when a folder that does not exist yet is named like a file (``-o out.wav``). ``folder``
    as given (text): as a Path, ``-o file:///data/out`` would be the folder ``./file:/data/out``."""
    from ..errors import ParameterError
    from ..local_paths import uri_refusal
    from ..writing import check_output_folder

    refusal = uri_refusal(folder)
    if refusal is not None:
        raise UsageError(f"{option or 'the output folder'} {folder} is {refusal}")
    folder = Path(folder)

    if option is not None and folder.suffix.lower() in _FILE_ENDINGS and not folder.exists():
        raise UsageError(
            f"{option} {folder}: OUT is a folder for the outputs (each named after its input), not a file; "
            f"pass a folder, e.g. {option} {folder.with_suffix('')}"
        )
    try:
        check_output_folder(folder)
    except ParameterError as exc:
        raise UsageError(str(exc)) from None


def check_inputs_exist(inputs: Sequence[str]) -> None:
    """Raise :class:`~rvcfast.errors.AudioError` (status 1) naming every input that does not
    exist, before any model is loaded: a mistyped name is reported at once, not after the
    models are loaded. ``-`` gets a note that standard input is not read."""
    from ..errors import AudioError, RvcfastError

    def gone(item: str) -> bool:
        try:
            return not Path(item).exists()
        except OSError:  # a name too long, a folder on its path that cannot be searched: the batch names it
            return False

    missing = [item for item in inputs if gone(item)]
    if not missing:
        return
    if len(missing) == 1:
        item = missing[0]
        note = " (audio is not read from standard input: name a file)" if item == "-" else ""
        raise AudioError(item, f"input file does not exist{note}")
    raise RvcfastError(f"{len(missing)} inputs do not exist: {', '.join(missing)}")


def check_model_files(model: str, index: str | None) -> None:
    """Raise :class:`~rvcfast.errors.ModelLoadError` (status 1) when the voice model or the
    index named on the command line is missing (or not a readable, non-empty file), before
    the models are loaded; the same checks, and words, as loading them."""
    from ..safe_load import check_file

    check_file(model, "voice model")
    if index is not None:
        check_file(index, "index")


def add_device_options(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1'...")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "auto"],
        help="compute precision (float16 needs CUDA or a CPU with AVX512-FP16; auto: bfloat16 where the hardware has it natively)",
    )


#: Failed files listed again after a run whose progress lines already named each one.
SHOWN_FAILURES = 20


def report_failures(failures: list[str], total: int, *, named_above: bool = False, report: Path | None = None) -> int:
    """Print each failed file with its reason; the exit status for the run. When the progress
    lines ``named_above`` each failure already, a long list is cut after
    :data:`SHOWN_FAILURES` lines (400 broken files of a corpus printed 400 lines twice), with
    where the rest is (``report``: the ``--report`` file)."""
    if not failures:
        return EXIT_OK
    say(f"{PROG}: {len(failures)} of {total} file(s) failed:")
    shown = failures[:SHOWN_FAILURES] if named_above and len(failures) > SHOWN_FAILURES + 5 else failures
    for line in shown:
        say(f"  {line}")
    if len(shown) < len(failures):
        where = f"in --report {report} and " if report is not None else ""
        say(f"  ... and {len(failures) - len(shown)} more ({where}each in its progress line above)")
    return EXIT_FAILED


def report_warnings(warnings: list[str]) -> None:
    """Print the input warnings of a run (each names its file)."""
    if warnings:
        say(f"{PROG}: {len(warnings)} warning(s):")
        for line in warnings:
            say(f"  warning: {line}")


# ------------------------------------------------------------------------ conversion parameters


class _EffectAction(argparse.Action):
    """``--effect reverb:room_size=0.3,wet_level=0.2`` (repeatable) -> ``{"reverb": {...}}``."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        name, _, rest = str(values).partition(":")
        params: dict[str, float] = {}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, sep, raw = item.partition("=")
            if key.strip() in params:  # the last would win, the first dropped unsaid
                raise argparse.ArgumentError(self, f"{key.strip()!r} is given twice in {values!r}; give it once")
            try:
                params[key.strip()] = float(raw)
            except ValueError:
                raise argparse.ArgumentError(self, f"expected NAME[:KEY=NUMBER,...], got {values!r}") from None
            if not sep:
                raise argparse.ArgumentError(self, f"expected NAME[:KEY=NUMBER,...], got {values!r}")
        _merge_effects(namespace, {name.strip(): params})


class _EffectsJsonAction(argparse.Action):
    """``--effects JSON``: its effects are added to those of earlier ``--effect``/``--effects``."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        _merge_effects(namespace, values)


def _merge_effects(namespace: Any, new: dict[str, Any]) -> None:
    """Add ``new`` effects to ``namespace.effects``: an effect given again keeps its earlier
    settings and takes the new ones (``--effect reverb:room_size=0.3 --effect reverb:damping=0.2``
    is both; an effect given with no settings, ``{"reverb": null}``, keeps the earlier ones), so
    nothing given on the command line is silently dropped."""
    effects = {k: dict(v) if isinstance(v, dict) else v for k, v in (getattr(namespace, "effects", None) or {}).items()}
    for name, params in new.items():
        old = effects.get(name)
        if isinstance(old, dict) and (isinstance(params, dict) or params is None):
            effects[name] = {**old, **(params or {})}
        else:
            effects[name] = params
    namespace.effects = effects


def _json_object(text: str) -> dict[str, Any]:
    p = Path(text)
    if p.suffix == ".json" and not text.lstrip().startswith("{") and not p.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    raw = p.read_text(encoding="utf-8") if p.suffix == ".json" and p.is_file() else text
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON (or a .json file): {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object {effect: {parameter: value}}")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refused where a key is given twice (the last would win unsaid)."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise argparse.ArgumentTypeError(f"{key!r} is given more than once in the same JSON object; give it once")
        value[key] = item
    return value


def _loudness(text: str) -> float | str | None:
    """``--loudness``: ``match`` or a number of LUFS."""
    from ..errors import ParameterError
    from ..params import coerce_param

    try:
        return coerce_param("loudness", text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_conversion_options(p: argparse.ArgumentParser | Any) -> None:
    """One option per :class:`~rvcfast.ConversionParams` field, from its declared kind, help and flag."""
    from ..params import param_specs

    for spec in param_specs():
        if not spec.cli:
            continue
        kw: dict[str, Any] = {"dest": spec.name, "help": spec.help}
        if spec.kind == "bool":
            kw["action"] = "store_false" if spec.default else "store_true"
            kw["default"] = spec.default
        elif spec.kind == "pair":
            kw.update(type=float, nargs=2, metavar=tuple((spec.metavar or "A B").split()), default=None)
        elif spec.kind == "mapping":
            kw.update(type=_json_object, metavar=spec.metavar, default=None)
            if spec.name == "effects":
                kw["action"] = _EffectsJsonAction
        elif spec.kind == "loudness":
            kw.update(type=_loudness, metavar=spec.metavar, default=None)
        elif spec.kind == "choice":
            kw.update(choices=spec.choices, default=spec.default)
        else:
            kw.update(type=int if spec.kind.endswith("int") else float, metavar=spec.metavar, default=spec.default)
        p.add_argument(spec.flag, **kw)
        if spec.name == "effects":
            p.add_argument(
                "--effect", action=_EffectAction, dest="effects", metavar="NAME[:KEY=V,...]",
                help="add one effect, repeatable, e.g. reverb:room_size=0.3 or compressor:threshold=-20,ratio=3",
            )


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The conversion parameters given on the command line, as keyword overrides."""
    from ..params import param_specs

    values = {s.name: getattr(args, s.name) for s in param_specs() if s.cli and hasattr(args, s.name)}
    if values.get("formant") is not None:
        values["formant"] = tuple(values["formant"])
    return values


def check_params(values: dict[str, Any], vocoder: Any = None) -> None:
    """Range-check conversion parameters before anything is loaded (a bad value is a usage error);
    with a loaded voice's ``vocoder``, its speaker count too."""
    from ..params import ConversionParams, param_specs

    try:
        ConversionParams.build(None, **values).validate(vocoder)
    except ParameterError as exc:
        text = str(exc)
        # the message names the parameter as Python spells it ("pitch must be within ..."): put the flag in front
        flag = next((s.flag for s in param_specs() if s.cli and text.startswith((f"{s.name} ", f"{s.name}="))), None)
        if flag is None and text.startswith(("effects:", "unknown effect", "unknown parameter", "effect '")):
            flag = "--effect/--effects"
        raise UsageError(f"{flag}: {text}" if flag else text) from None
