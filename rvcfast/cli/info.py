"""``rvcfast info``: describe a voice model and its index (through :mod:`rvcfast.describe`)."""

from __future__ import annotations

import argparse
import json
import os
import unicodedata
from typing import Any

from ._common import EXIT_OK, HelpFormatter, UsageError, out


def _printable(text: str) -> str:
    """``text`` with control and format characters (ESC, BEL, bidi overrides...) shown as
    ``\\x1b``-style escapes: a checkpoint's metadata is untrusted, and printed raw it could
    clear the terminal, set its title or hide text."""
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _rows_out(rows: list[tuple[str, str]]) -> None:
    """Print ``rows`` as two aligned columns, every character printable."""
    rows = [(_printable(k), _printable(v)) for k, v in rows]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out(f"{k:<{width}}  {v}")


def _short(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _profile_row(report: dict[str, Any]) -> str:
    """The profile file used, or the one looked at and what chose it (``RVCFAST_PROFILE``...)."""
    if report["profile"]:
        return f"{report['profile']} (from {report['profile_file_from']})"
    if report.get("profile_file") is None:
        return f"(none: profiles are off, {report.get('profile_file_from', 'RVCFAST_PROFILE')})"
    return f"(none) looked in {report['profile_file']} (from {report['profile_file_from']})"


#: Where a default value comes from (``settings.sources``): said by the ``source`` row already.
_DEFAULTS = ("default", "torch's default", "hardware")


def _from_elsewhere(settings: dict[str, Any], key: str) -> str:
    """`` (from MKL_NUM_THREADS=1)`` for a setting whose value does not come from where ``source``
    says the settings come from (the profile, or the defaults); ``""`` otherwise."""
    where = settings.get("sources", {}).get(key)
    if where is None:  # the source row itself
        return ""
    usual = where == "profile" if settings["source"] == "profile" else where.startswith(_DEFAULTS)
    return "" if usual else f"  (from {where})"


def _system(report: dict[str, Any]) -> None:
    """Print :func:`rvcfast.tuning.system_report`'s report as text."""
    feats = " ".join(f"{k}{'' if v else '(no)'}" for k, v in report["features"].items())
    rows = [
        ("cpu", f"{report['cpu']} ({report['cores']} cores)"),
        ("features", feats),
        ("native bf16", "yes" if report["native_bf16"] else "no"),
        ("native fp16", "yes" if report["native_fp16"] else "no"),
        ("torch", f"{report['torch']} (oneDNN {'yes' if report['mkldnn'] else 'no'}, {report['torch_threads']} threads)"),
        ("device", report["device"] + (f" ({report['cuda']})" if report["cuda"] else "")),
        ("profile", _profile_row(report)),
        ("  for machine", report["machine"]),  # what a profile entry must name to apply here
    ]
    labels = {"auto_dtype": "dtype (auto)"}  # the JSON keys are identifiers; the text says what they mean
    settings = report["settings"]
    rows += [
        (f"  {labels.get(k, k)}", f"{v}{_from_elsewhere(settings, k)}") for k, v in settings.items() if k != "sources"
    ]
    w = report.get("weights")
    if w is not None:  # where hubert_base.pt and rmvpe.pt are found now, or how to get them
        rows.append(("base weights", "searched in " + ", ".join(w["search_folders"])))
        rows += [(f"  {name}", path or f"missing: `{w['download'][name]}`") for name, path in w["files"].items()]
    _rows_out(rows)


def _model_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The text rows describing ``report``'s model and index."""
    from ..progress import format_bytes

    rows: list[tuple[str, str]] = []
    if "model" in report:
        m = report["model"]
        rows += [
            ("model", f"{m['path']} ({format_bytes(m['file_bytes'])})"),
            ("version", m["version"]),
            ("sample rate", f"{m['sample_rate']} Hz" if m["sample_rate"] else "not in the file (an ONNX export without metadata)"),
            ("pitch (F0)", "yes" if m["f0"] else "no"),
            ("speakers", str(m["speakers"])),
            ("vocoder", str(m["vocoder"])),
            ("embedder", str(m["embedder"] or "(not named; contentvec / hubert_base)")),
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
    return rows


#: The first bytes of the faiss files rvcfast reads (IVF-Flat, flat L2).
_FAISS_HEADERS = (b"IwFl", b"IxF2", b"IxFl")


def _is_index(path: str) -> bool:
    """Whether MODEL is described as an index: by its first bytes (a faiss header, or a PyTorch
    file's: a voice renamed ``.index`` or an index renamed ``.pth`` in a collection of models),
    else by its ``.index`` name."""
    head = b""
    try:
        if os.path.isfile(path):  # never opened otherwise: a FIFO would block
            with open(path, "rb") as f:
                head = f.read(4)
    except OSError:
        pass  # the description says what is wrong with the file
    if head in _FAISS_HEADERS:
        return True
    if head[:1] == b"\x80" or head == b"PK\x03\x04":  # a PyTorch file (zip or legacy pickle)
        return False
    return path.lower().endswith(".index")


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a voice model (and optionally its index)."""
    from ..describe import describe_index, describe_model

    if args.model is None and args.index is None and not args.system:
        raise UsageError("give a MODEL (or an .index), or --system")
    if args.device != "auto" and not args.system:  # accepted and ignored before: files are described as stored
        raise UsageError("--device is for --system (the device to report on); a model is described as stored")
    report: dict[str, Any] = {}
    if args.system:
        from ..tuning import system_report
        from ..weights import weights_status

        report["system"] = {**system_report(args.device), "weights": weights_status()}
        if not args.json:
            _system(report["system"])
    if args.model is None and args.index is None:
        if args.json:  # --system --json alone: {"system": {...}}
            out(json.dumps(report, indent=2))
        return EXIT_OK
    model, index = args.model, args.index
    if index is None and _is_index(model):
        model, index = None, model  # `rvcfast info voice.index` describes the index alone
    if model is not None:
        report["model"] = describe_model(model)
    if index is not None:
        report["index"] = describe_index(index)
        if "model" in report:
            report["index"]["matches_model"] = report["index"]["dim"] == report["model"]["feature_dim"]
    if args.json:  # one object: {"system": ..., "model": ..., "index": ...}, the keys asked for
        out(json.dumps(report, indent=2))
        return EXIT_OK
    if args.system:
        out()  # the model's rows below the machine's
    _rows_out(_model_rows(report))
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe a voice model and its index",
        description=(
            "Describe a voice model: version, sample rate, F0 or not, speakers, feature dimension,\n"
            "the 18-value config and the metadata keys present (info, epoch, author...). With --index\n"
            "(or an .index file as MODEL) also the index: size, dimension, nlist, nprobe."
        ),
        epilog="examples:\n  rvcfast info voice.pth\n  rvcfast info voice.pth --index voice.index --json\n  rvcfast info --system",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "model", metavar="MODEL", nargs="?",
        help="voice model .pth (or a faiss .index; a renamed file is told by its first bytes)",
    )
    p.add_argument("--system", action="store_true", help="describe this machine: CPU features, torch, the settings runs use")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="with --system: the device to report on")
    p.add_argument("--index", metavar="FILE", help="faiss .index to describe as well")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)
