"""Find F0 extractors by name through the ``rvcfast.f0_extractors`` entry-point group.

Built-in backends are registered in rvcfast's own ``pyproject.toml`` exactly like
third-party ones, so a plugin package adds a tracker with::

    [project.entry-points."rvcfast.f0_extractors"]
    my-tracker = "my_package.module:MyExtractor"

The target is called with the options given to :func:`get_f0_extractor` (typically
``device=...``, ``dtype=...`` and backend options) and must return an object that
satisfies :class:`rvcfast.protocols.F0Extractor`.

Names are case-insensitive. ``hybrid:a+b[+c...]`` (or Applio's ``hybrid[a+b]``) builds a
:class:`~rvcfast.f0.hybrid.HybridExtractor` of the named backends.

Nothing is cached: entry points are read from the installed distributions on every
call (cheap), so packages installed while the process runs are seen after
``importlib.invalidate_caches()``.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailableError, ParameterError, RvcfastError
from ..protocols import F0Extractor
from .base import HOP_LENGTH, SAMPLE_RATE

__all__ = [
    "ENTRY_POINT_GROUP", "available_f0_extractors", "get_f0_extractor", "parse_hybrid", "check_f0_options",
    "ignored_f0_registrations", "check_f0_weights",
]

ENTRY_POINT_GROUP = "rvcfast.f0_extractors"

_OWN_DISTRIBUTION = "rvcfast"
_BUILTIN_SOURCE = "rvcfast (built-in)"

# Optional modules -> the rvcfast extra that installs them (read-only constant).
_EXTRA_FOR_MODULE: Mapping[str, str] = {
    "parselmouth": "pm",
    "torchfcpe": "fcpe",
    "faiss": "faiss",
    "tqdm": "progress",
    "swift_f0": "swift",
    "onnxruntime": "swift",
}
# Built-in backends that need an extra (read-only constant).
_EXTRA_FOR_BACKEND: Mapping[str, str] = {"pm": "pm", "fcpe": "fcpe", "swift": "swift"}

_HYBRID_RE = re.compile(r"^hybrid(?::(?P<colon>.*)|\[(?P<bracket>.*)\])$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class _Registered:
    name: str  # lower-case
    entry_point: md.EntryPoint
    source: str
    builtin: bool


def _normalise_dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_key(dist: md.Distribution) -> str | None:
    """Normalised distribution name, from the ``.dist-info`` folder's name where possible.

    That is the standard library's own shortcut (``importlib.metadata`` de-duplicates
    distributions with it); parsing every package's METADATA instead took 0.23 s of
    each process's start-up with ~180 packages installed. Other distributions fall back
    to their METADATA's ``Name``.
    """
    fast = getattr(dist, "_normalized_name", None)
    name = fast if isinstance(fast, str) and fast else dist.metadata["Name"]
    return _normalise_dist_name(name) if name else None


def _iter_entry_points() -> Iterator[tuple[md.EntryPoint, str, bool]]:
    """Yield ``(entry point, source, is_builtin)`` for the group, one distribution at a time.

    A distribution whose metadata cannot be read is skipped, so one broken package does
    not hide the others. As in :func:`importlib.metadata.entry_points`, only the first
    distribution of a given name on ``sys.path`` counts. Only distributions that register
    in the group have their METADATA read (for the name and version shown as the source).
    """
    seen: set[str] = set()
    for dist in md.distributions():
        try:
            key = _dist_key(dist)
            if not key or key in seen:
                continue
            seen.add(key)
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not eps:
                continue
            dist_name = dist.metadata["Name"] or key
            version = dist.version
        except Exception:  # noqa: BLE001 - broken metadata of someone else's package
            continue
        builtin = key == _OWN_DISTRIBUTION
        source = _BUILTIN_SOURCE if builtin else f"{dist_name} {version}"
        for ep in eps:
            yield ep, source, builtin


def _registry(ignored: list[tuple[str, str, str]] | None = None) -> dict[str, _Registered]:
    """Name (lower-case) -> registration. Built-ins win over plugins; otherwise first wins.
    Registrations left out are appended to ``ignored`` as ``(name, source, why)``."""
    found: dict[str, _Registered] = {}
    dropped: list[_Registered] = []
    for ep, source, builtin in _iter_entry_points():
        key = ep.name.strip().lower()
        if not key or _HYBRID_RE.match(key) or key == "hybrid":
            if ignored is not None and key:  # "hybrid" is reserved for combinations
                ignored.append((ep.name, source, "names starting with 'hybrid' are reserved for combinations"))
            continue
        old = found.get(key)
        if old is None or (builtin and not old.builtin):
            found[key] = _Registered(key, ep, source, builtin)
            if old is not None:
                dropped.append(old)
        else:
            dropped.append(_Registered(key, ep, source, builtin))
    if ignored is not None:
        for reg in dropped:
            winner = found[reg.name]
            why = "the built-in backend of that name wins" if winner.builtin else f"{winner.source} registers it too and wins"
            ignored.append((reg.name, reg.source, why))
    return found


def ignored_f0_registrations() -> list[tuple[str, str, str]]:
    """Entry points of the group that are not used, as ``(name, source, why)``: a plugin's name
    that a built-in backend (or a distribution found earlier on ``sys.path``) already uses, or a
    name reserved for combinations (``hybrid...``). ``rvcfast backends`` shows them, so that a
    plugin author sees why their backend is not the one that runs."""
    ignored: list[tuple[str, str, str]] = []
    _registry(ignored)
    return ignored


def available_f0_extractors() -> dict[str, str]:
    """Names of the installed F0 extractors and where each comes from.

    Returns a dict ``{name: source}`` sorted by name, where ``source`` is
    ``"rvcfast (built-in)"`` or ``"<distribution> <version>"`` of the plugin package that
    registered it. Nothing is imported: a backend listed here may still need an optional
    extra (``pm``, ``fcpe``), which :func:`get_f0_extractor` reports. Combinations
    (``hybrid:a+b``) are not listed; any two or more names here can be combined.
    """
    return {name: reg.source for name, reg in sorted(_registry().items())}


def parse_hybrid(spec: str) -> list[str] | None:
    """Member names of a hybrid spec (``hybrid:a+b`` or ``hybrid[a+b]``), else ``None``.

    Names are lower-cased and stripped. Raises :class:`ParameterError` for an empty
    member, fewer than two members, a repeated member, a nested hybrid (a member
    named ``hybrid`` or holding ``[``, ``]`` or ``:``) or an unclosed ``hybrid[``.
    """
    m = _HYBRID_RE.match(spec.strip())
    if m is None:
        if spec.strip().lower().startswith("hybrid["):
            raise ParameterError(f"malformed hybrid F0 spec {spec!r}: no closing ']' (e.g. 'hybrid[rmvpe+crepe]')")
        return None
    body = m.group("colon") if m.group("colon") is not None else m.group("bracket")
    members = [part.strip().lower() for part in body.split("+")]
    if any(not part for part in members):
        raise ParameterError(f"malformed hybrid F0 spec {spec!r}: expected e.g. 'hybrid:rmvpe+crepe'")
    if any(part == "hybrid" or any(c in part for c in "[]:") for part in members):
        raise ParameterError(
            f"malformed hybrid F0 spec {spec!r}: a hybrid cannot contain another hybrid (or brackets); "
            "list every backend in one spec, e.g. 'hybrid:rmvpe+crepe+fcpe'"
        )
    if len(members) < 2:
        raise ParameterError(f"hybrid F0 spec {spec!r} names {len(members)} backend; combine at least two")
    dupes = sorted({p for p in members if members.count(p) > 1})
    if dupes:
        raise ParameterError(f"hybrid F0 spec {spec!r} repeats {', '.join(dupes)}")
    return members


def _unknown(name: str, registry: Mapping[str, _Registered]) -> BackendUnavailableError:
    names = ", ".join(sorted(registry)) or "(none)"
    close = difflib.get_close_matches(str(name).lower().replace("_", "-"), sorted(registry), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return BackendUnavailableError(
        f"unknown F0 extractor {name!r}{hint}; available: {names} "
        "(or 'hybrid:a+b' to combine several). Third-party backends register under the "
        f"entry-point group {ENTRY_POINT_GROUP!r}."
    )


def _own_module_missing(reg: _Registered, exc: ImportError) -> bool:
    """Whether ``exc`` says that a module of the plugin's own package (the one its entry point
    names, or a part of that package) is missing, rather than a dependency it imports."""
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    module = reg.entry_point.value.partition(":")[0].strip()
    return bool(missing) and module.split(".")[0] == missing


def _missing_dependency(reg: _Registered, exc: ImportError) -> BackendUnavailableError:
    if not reg.builtin and isinstance(exc, ModuleNotFoundError) and _own_module_missing(reg, exc):
        return BackendUnavailableError(
            f"F0 extractor {reg.name!r} from {reg.source}: its entry point names {reg.entry_point.value!r}, "
            f"but its own module could not be imported ({exc}). The package is installed incompletely or its "
            f"entry point is misspelt: fix the [project.entry-points.{ENTRY_POINT_GROUP!r}] table and "
            "reinstall it."
        )
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    if reg.builtin:
        extra = _EXTRA_FOR_MODULE.get(missing)
        if extra is None and missing != _OWN_DISTRIBUTION:
            extra = _EXTRA_FOR_BACKEND.get(reg.name)
        if extra is not None:
            return BackendUnavailableError(f'{reg.name} needs `pip install "rvcfast[{extra}]"` (import failed: {exc})')
        return BackendUnavailableError(
            f"F0 extractor {reg.name!r} ({reg.entry_point.value}) could not be imported: {exc}. "
            "Reinstall rvcfast, or pick another backend."
        )
    what = f"module {missing!r}" if missing else "a module"
    return BackendUnavailableError(
        f"F0 extractor {reg.name!r} from {reg.source} ({reg.entry_point.value}) needs {what} that could "
        f"not be imported: {exc}. Install that package's dependencies."
    )


def _load(reg: _Registered) -> Any:
    try:
        return reg.entry_point.load()
    except BackendUnavailableError:
        raise
    except ImportError as exc:
        raise _missing_dependency(reg, exc) from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must give a clear error
        # SystemExit too: a module that calls sys.exit("needs CUDA") must not end the server
        raise BackendUnavailableError(
            f"F0 extractor {reg.name!r} from {reg.source} ({reg.entry_point.value}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _accepted_options(factory: Any) -> tuple[set[str], bool] | None:
    """Keyword names ``factory`` accepts and whether it takes ``**kwargs`` (None if unknown)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names: set[str] = set()
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    return names, var_kw


def _check_extractor(obj: Any, reg: _Registered) -> F0Extractor:
    if not isinstance(obj, F0Extractor):
        missing = [
            attr
            for attr in ("name", "sample_rate", "hop_length", "extract", "extract_batch")
            if not hasattr(obj, attr)
        ]
        raise BackendUnavailableError(
            f"F0 extractor {reg.name!r} from {reg.source} ({reg.entry_point.value}) returned "
            f"{type(obj).__name__}, which is not an F0Extractor (missing: {', '.join(missing)})"
        )
    if obj.sample_rate != SAMPLE_RATE or obj.hop_length != HOP_LENGTH:
        raise BackendUnavailableError(
            f"F0 extractor {reg.name!r} from {reg.source} works at sample_rate={obj.sample_rate}, "
            f"hop_length={obj.hop_length}; rvcfast needs {SAMPLE_RATE} Hz and hop {HOP_LENGTH}"
        )
    return obj


#: Options every front end passes (the converter's device and precision).
_FRONT_END_OPTIONS = frozenset({"device", "dtype"})


def _refused(reg: _Registered, unknown: list[str], names: set[str]) -> ParameterError:
    """The error for options the factory does not take; when they are the ones every front end
    passes (``device``/``dtype``), it says so and how the plugin takes them."""
    where = "" if reg.builtin else f" from {reg.source} ({reg.entry_point.value})"
    msg = (
        f"F0 extractor {reg.name!r}{where} does not accept option(s) "
        f"{', '.join(unknown)}; it accepts: {', '.join(sorted(names)) or '(none)'}"
    )
    front = sorted(set(unknown) & _FRONT_END_OPTIONS)
    if front and not reg.builtin:
        msg += (
            ". rvcfast's converter, command line and server always pass device= and may pass dtype=: "
            "the plugin's factory must accept both (e.g. `device=None, dtype=None`, or **kwargs)"
        )
    return ParameterError(msg)


def _build(reg: _Registered, options: Mapping[str, Any], target: Any = None) -> F0Extractor:
    if target is None:
        target = _load(reg)
    if not callable(target):
        # a ready-made object: the device/dtype every front end passes are not for it to take
        own = sorted(set(options) - _FRONT_END_OPTIONS)
        if own:
            raise ParameterError(
                f"F0 extractor {reg.name!r} from {reg.source} ({reg.entry_point.value}) is a ready-made "
                f"object and takes no options, got {', '.join(own)}"
            )
        return _check_extractor(target, reg)
    accepted = _accepted_options(target)
    if accepted is not None:
        names, var_kw = accepted
        unknown = sorted(set(options) - names)
        if unknown and not var_kw:
            raise _refused(reg, unknown, names)
    try:
        obj = target(**options)
    except RvcfastError:
        raise  # rvcfast's own errors (a built-in's ParameterError...) already say what is wrong
    except ImportError as exc:
        raise _missing_dependency(reg, exc) from exc
    except (ValueError, TypeError) as exc:  # a plugin's way of refusing an option value
        raise ParameterError(
            f"F0 extractor {reg.name!r} from {reg.source} refused its options {_shown(options)}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin must give a clear error
        raise BackendUnavailableError(
            f"F0 extractor {reg.name!r} from {reg.source} ({reg.entry_point.value}) failed to start: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return _check_extractor(obj, reg)


def _shown(options: Mapping[str, Any]) -> str:
    """``options`` for a message, without ``device``/``dtype`` (every front end passes those)."""
    own = {k: v for k, v in options.items() if k not in ("device", "dtype")}
    return ", ".join(f"{k}={v!r}" for k, v in sorted(own.items())) or "(none)"


def _member_named(key: str, members: list[str]) -> str | None:
    """The hybrid member an option key names, or ``None``. Case and ``-``/``_`` do not matter, so
    ``--f0-option yin_example={...}`` (a command-line key is a Python name) reaches ``yin-example``."""
    wanted = key.strip().lower().replace("_", "-")
    return next((m for m in members if m.replace("_", "-") == wanted), None)


def _hybrid(spec: str, members: list[str], options: dict[str, Any]) -> F0Extractor:
    from .hybrid import HybridExtractor

    registry = _registry()
    unknown = [m for m in members if m not in registry]
    if unknown:
        raise BackendUnavailableError(
            f"hybrid F0 spec {spec!r}: unknown member(s) {', '.join(unknown)}; "
            f"available: {', '.join(sorted(registry)) or '(none)'}"
        )
    min_voiced = options.pop("min_voiced", None)
    per_backend: dict[str, dict[str, Any]] = {}
    for key in list(options):
        member = _member_named(key, members)
        if member is not None:
            value = options.pop(key)
            if not isinstance(value, Mapping):
                raise ParameterError(f"options for hybrid member {key!r} must be a dict, got {value!r}")
            per_backend.setdefault(member, {}).update(value)
    shared = options
    used: set[str] = set()
    backends: list[F0Extractor] = []
    for m in members:
        reg = registry[m]
        target = _load(reg)
        accepted = _accepted_options(target) if callable(target) else (set(), False)
        if accepted is None or accepted[1]:
            mine = dict(shared)
        else:
            mine = {k: v for k, v in shared.items() if k in accepted[0]}
        used.update(mine)
        mine.update(per_backend.get(m, {}))
        backends.append(_build(reg, mine, target))
    unused = sorted(set(shared) - used)
    if unused:
        raise ParameterError(f"no member of {spec!r} accepts option(s) {', '.join(unused)}")
    return HybridExtractor(backends, min_voiced=min_voiced, name="hybrid:" + "+".join(members))


def _unaccepted(reg: _Registered, names: set[str]) -> list[str]:
    """The ``names`` the backend's factory does not take (none when it takes ``**kwargs`` or its
    signature cannot be read); the factory is imported, nothing is built."""
    target = _load(reg)
    if not callable(target):
        return sorted(names)
    accepted = _accepted_options(target)
    if accepted is None or accepted[1]:
        return []
    return sorted(names - accepted[0])


def check_f0_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`ParameterError` when ``options`` holds a name the backend ``name`` (or no member
    of a hybrid) accepts, as :func:`get_f0_extractor` would, but before anything is built or
    loaded: a command line refuses a misspelt ``--f0-option`` before the voice model loads.
    Values are not checked (the backend checks them when it is built); an unknown ``name`` is
    :class:`BackendUnavailableError`."""
    registry = _registry()
    members = parse_hybrid(name)
    if members is None:
        reg = registry.get(name.strip().lower())
        if reg is None:
            raise _unknown(name, registry)
        unknown = _unaccepted(reg, set(options))
        if unknown:
            raise ParameterError(f"F0 extractor {reg.name!r} does not accept option(s) {', '.join(unknown)}")
        return
    missing = [m for m in members if m not in registry]
    if missing:
        raise _unknown(missing[0], registry)
    shared = {k for k in options if k != "min_voiced" and _member_named(k, members) is None}
    for m in members:
        for key, mine in options.items():
            if _member_named(key, members) == m and isinstance(mine, Mapping):
                unknown = _unaccepted(registry[m], set(mine))
                if unknown:
                    raise ParameterError(f"hybrid member {m!r} does not accept option(s) {', '.join(unknown)}")
        shared = {k for k in shared if k in _unaccepted(registry[m], {k})}
    if shared:
        raise ParameterError(f"no member of {name!r} accepts option(s) {', '.join(sorted(shared))}")


def get_f0_extractor(name: str, **options: Any) -> F0Extractor:
    """Build the F0 extractor registered as ``name`` (case-insensitive), passing ``options``.

    Args:
        name: a name from :func:`available_f0_extractors` (``"rmvpe"``, ``"harvest"``, a
            plugin's name, ...), or a combination ``"hybrid:rmvpe+crepe"`` /
            ``"hybrid[rmvpe+crepe]"`` (see :class:`~rvcfast.f0.hybrid.HybridExtractor`).
        **options: keyword arguments for the extractor, e.g. ``device="cuda"``,
            ``filter_radius=3``. For a hybrid, each option goes to every member that accepts
            it (an option no member accepts is an error); ``min_voiced=`` goes to the hybrid;
            and an option named after a member, e.g. ``rmvpe={"threshold": 0.05}``, holds
            options for that member only.

    Returns:
        An object satisfying :class:`~rvcfast.protocols.F0Extractor`.

    Raises:
        BackendUnavailableError: unknown name (the message lists the available ones), a
            missing optional dependency (the message names the extra to install, e.g.
            ``pip install "rvcfast[pm]"``), a plugin that fails to load or to start, or a
            result that is not an F0 extractor.
        ParameterError: an option the extractor does not accept, an option value it refuses
            (a ``ValueError``/``TypeError`` from a plugin's constructor, reported with the
            backend's name and distribution), or a malformed hybrid spec.
    """
    if not isinstance(name, str):
        raise ParameterError(f"F0 extractor name must be a string, got {type(name).__name__}")
    members = parse_hybrid(name)
    if members is not None:
        return _hybrid(name, members, dict(options))
    key = name.strip().lower()
    registry = _registry()
    reg = registry.get(key)
    if reg is None:
        raise _unknown(name, registry)
    return _build(reg, options)


def build_f0_extractor(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
    options: Mapping[str, Any] | None = None,
    device: Any = "cpu",
    dtype: Any = None,
) -> F0Extractor:
    """The one place that turns user-level F0 choices into an extractor.

    Every front end (``Converter.from_pretrained``, the engine, the command line, the
    server) calls this, so the same words mean the same thing everywhere:

    * ``weights`` is the weights file of the backend (``rmvpe.pt`` for RMVPE, a model
      file for backends that take ``weights``); for a hybrid it belongs to the hybrid's
      ``rmvpe`` member only, and a hybrid without RMVPE refuses it.
    * ``allow_download`` lets RMVPE (alone or in a hybrid) fetch ``rmvpe.pt`` into the cache.
    * ``device``/``dtype``: where and in which precision the F0 network runs (the
      converter's own, unless ``options`` says otherwise).
    * ``options`` are the backend's own keyword options (``--f0-option KEY=VALUE``).
    """
    opts: dict[str, Any] = {"device": device}
    if dtype is not None:
        opts["dtype"] = dtype
    opts.update(dict(options or {}))
    members = parse_hybrid(spec)
    rmvpe_opts: dict[str, Any] = {}
    if weights is not None:
        rmvpe_opts["weights"] = weights
    if allow_download:
        rmvpe_opts["allow_download"] = True
    if weights is not None:
        check_f0_weights(spec)
    if members is not None:
        if "rmvpe" in members and rmvpe_opts:
            opts["rmvpe"] = {**rmvpe_opts, **dict(opts.get("rmvpe") or {})}
    elif spec.strip().lower() == "rmvpe":
        opts = {**rmvpe_opts, **opts}
    elif weights is not None:
        opts["weights"] = weights
    return get_f0_extractor(spec, **opts)


def check_f0_weights(spec: str) -> None:
    """A :class:`ParameterError` naming the f0 weights option the user gave (``f0_weights=`` /
    ``--f0-weights``) when the backend ``spec`` takes no weights file: a hybrid without an
    ``rmvpe`` member, or a backend without a ``weights`` option (it said only "does not
    accept option(s) weights", an option the user never typed). Nothing is imported but the
    backend's module. The file's path is not in the message: the server answers it to
    clients, who must not see its paths."""
    members = parse_hybrid(spec)
    if members is not None:
        if "rmvpe" not in members:
            raise ParameterError(
                f"f0 weights are the rmvpe.pt of a hybrid's rmvpe member, and {spec!r} has no rmvpe member"
            )
        return
    reg = _registry().get(spec.strip().lower())
    if reg is not None and _unaccepted(reg, {"weights"}):
        raise ParameterError(
            "F0 weights (f0_weights= / --f0-weights) were given, but F0 backend "
            f"{reg.name!r} from {reg.source} takes no weights file (F0 weights are the rmvpe.pt of 'rmvpe', "
            "alone or in a hybrid, or the model file of a backend that takes one): leave them out"
        )
