"""Where one file's time goes, operator by operator (``torch.profiler``), per precision and code version.

    python benchmarks/op_profile.py                                   # this tree: float32 (+ bfloat16 on AVX512-BF16/AMX)
    python benchmarks/op_profile.py --tree base=/tmp/old --tree new=. # before / after, same machine
    python benchmarks/op_profile.py --dtype bfloat16 --top 25         # one precision, more operators

Each (tree, precision) runs in a fresh process: the full-size random models (index, RMVPE,
``--device cpu``) are loaded, one 5 s clip of batch12 is converted once unmeasured (oneDNN
builds its kernels on first use), and the next clip is converted under ``torch.profiler``.
The table sums each operator's *self* CPU time (what ran in it, not in the
operators it called) into a few groups -- convolutions, matrix products and attention,
copies and dtype/layout conversions, fills, elementwise work, the rest -- and gives the
call counts the issue's profile named (``copy_``, ``add_``, convolutions: each counted once,
where it enters the profile, see :data:`CONV_ENTRY`), then the heaviest operators. Self times of threads that ran at once add up, so on two cores the
total can exceed the wall time. The profiler does not record operators on threads started
during the profiled call (RMVPE's BiGRU runs its backward direction on one: ~704 ``addmm``
calls a file are missing). The CPU line is printed with the figures.

The full-size models are built once into ``$RVCFAST_BENCH_MODELS`` (default
``~/.cache/rvcfast/bench-models``) by :func:`rvcfast.testing.build_bench_models`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RVCFAST_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))
CLIPS = SHARED / "audio" / "batch12"

#: Operator groups, first match wins (operator names as the profiler gives them, ``aten::...``).
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("convolutions", re.compile(r"conv|mkldnn_convolution|_convolution_pointwise")),
    ("attention", re.compile(r"scaled_dot_product|_softmax")),
    ("matrix products", re.compile(r"::(addmm|mm|bmm|baddbmm|matmul|linear|_mkl_linear|mkldnn_linear)$")),
    ("recurrent (own time)", re.compile(r"::(gru|lstm|rnn_tanh|gru_cell)")),
    ("copies, dtype/layout", re.compile(r"::(copy_|_to_copy|clone|contiguous|to_dense|to_mkldnn|_reshape_copy|cat)$|reorder")),
    ("fills", re.compile(r"::(fill_|zero_|zeros|empty_like_fill)$")),
    (
        "elementwise",
        re.compile(
            r"::(add|add_|sub|sub_|mul|mul_|div|div_|leaky_relu|leaky_relu_|relu|relu_|gelu|gelu_|tanh|tanh_|"
            r"sigmoid|sigmoid_|sin|sin_|cos|exp|log|clamp|clamp_|clamp_min|clamp_min_|where|abs|pow|sqrt|rsqrt|"
            r"neg|floor|round|cumsum|native_layer_norm|native_group_norm|native_batch_norm|_batch_norm_impl_index|"
            r"avg_pool2d|max_pool2d|remainder|lerp_|addcmul_|masked_fill_|rsub|minimum|maximum)$"
        ),
    ),
]
#: The groups in the order tables list them.
GROUP_ORDER = [g for g, _ in GROUPS] + ["other"]
#: Operators whose call counts the issue's profile named.
COUNTED = ("aten::copy_", "aten::add_", "aten::leaky_relu_", "aten::fill_")
#: Where a convolution enters the profile once: ``aten::convolution`` (what ``conv1d``, ``conv2d``,
#: ``conv_transpose*d`` and ``F.conv*`` all call; below it come ``_convolution`` and a backend
#: kernel such as ``mkldnn_convolution``, so counting every operator named "conv" counts one
#: convolution three or four times) and oneDNN's fused operators called directly (``mkldnn::``).
CONV_ENTRY = re.compile(r"^aten::convolution$|^(?!aten::).*convolution")


def group_of(name: str) -> str:
    """The group an operator's self time is summed into (``other`` when none matches)."""
    for group, pattern in GROUPS:
        if pattern.search(name):
            return group
    return "other"


def _child(dtype: str, warm: str, clip: str, models: str) -> None:
    """Runs in the measured process: convert ``warm`` unmeasured, profile ``clip``, print JSON."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import rvcfast

    paths = json.loads(models)
    conv = rvcfast.Converter.from_pretrained(
        paths["model"], index=paths["index"], encoder=paths["encoder"], f0="rmvpe",
        f0_weights=paths["f0_weights"], device="cpu", dtype=dtype,
    )
    with tempfile.TemporaryDirectory(prefix="rvcfast-prof-") as out:
        conv.convert_batch([warm], out_dir=Path(out) / "warm")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            conv.convert_batch([clip], out_dir=Path(out) / "profiled")
            wall = time.perf_counter() - start
    ops = {
        ev.key: [ev.self_cpu_time_total / 1e6, ev.count]
        for ev in prof.key_averages()
        if ev.self_cpu_time_total > 0 or ev.key in COUNTED or CONV_ENTRY.search(ev.key)
    }
    print(json.dumps({"wall": wall, "threads": torch.get_num_threads(), "ops": ops}))


def _run(tree: Path, dtype: str, warm: Path, clip: Path, paths: dict[str, Path]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env["RVCFAST_PROFILE"] = "off"  # an `rvcfast tune` profile would change the newer trees' batch size only
    models = json.dumps({k: str(v) for k, v in paths.items()})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", dtype, str(warm), str(clip), models]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profiling {tree} ({dtype}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sums(res: dict) -> tuple[dict[str, float], dict[str, int]]:
    """Self CPU seconds per group and the counted calls of one profile."""
    groups: dict[str, float] = {}
    for op, (t, _) in res["ops"].items():
        groups[group_of(op)] = groups.get(group_of(op), 0.0) + t
    calls = {"convolutions": sum(c for op, (_, c) in res["ops"].items() if CONV_ENTRY.search(op))}
    calls.update({op.split("::")[1]: res["ops"].get(op, [0, 0])[1] for op in COUNTED})
    return groups, calls


def _table(name: str, dtype: str, res: dict, top: int) -> list[str]:
    groups, calls = _sums(res)
    total = sum(groups.values())
    lines = [
        f"### {name}, {dtype}: one 5 s clip, wall {res['wall']:.2f} s, "
        f"self CPU {total:.2f} s on {res['threads']} threads",
        "",
        "| group | self CPU | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {g} | {groups.get(g, 0.0) * 1000:.0f} ms | {groups.get(g, 0.0) / total:.1%} |" for g in GROUP_ORDER]
    counts = ", ".join(f"`{key}` {n}" if key != "convolutions" else f"convolutions {n}" for key, n in calls.items())
    lines += ["", f"Calls: {counts}.", "", "| operator | self CPU | calls |", "|---|---:|---:|"]
    for op, (t, c) in sorted(res["ops"].items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{op}` | {t * 1000:.1f} ms | {c} |")
    return lines + [""]


def _compare(results: list[tuple[str, dict]]) -> list[str]:
    """One table, a column per (tree, precision): wall, self CPU per group (ms), counted calls."""
    sums = [_sums(res) for _, res in results]
    lines = ["| | " + " | ".join(name for name, _ in results) + " |", "|---" + "|---:" * len(results) + "|"]
    lines.append("| wall of the profiled call | " + " | ".join(f"{res['wall']:.2f} s" for _, res in results) + " |")
    lines.append("| self CPU, all operators | " + " | ".join(f"{sum(g.values()):.2f} s" for g, _ in sums) + " |")
    for group in GROUP_ORDER:
        lines.append(f"| {group} | " + " | ".join(f"{g.get(group, 0.0) * 1000:.0f} ms" for g, _ in sums) + " |")
    for key in sums[0][1]:
        lines.append(f"| calls: {key} | " + " | ".join(str(c[key]) for _, c in sums) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(*argv[1:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", nargs="+", default=None,
                        help="precisions to profile (default: float32, and bfloat16 where the CPU has "
                             "AVX512-BF16 or AMX); one rvcfast refuses here is skipped with its reason")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="an rvcfast source tree to profile (default: this one)")
    parser.add_argument("--top", type=int, default=12, help="heaviest operators listed per table")
    args = parser.parse_args(argv)
    if not CLIPS.is_dir():
        raise SystemExit(f"{CLIPS} not found: set RVCFAST_SHARED to the folder holding audio/batch12")
    trees = [(t.partition("=")[0], Path(t.partition("=")[2]).resolve()) for t in args.tree] or [("this tree", REPO)]
    for (name, tree), spec in zip(trees, args.tree):
        if not name or not (tree / "rvcfast" / "__init__.py").is_file():
            raise SystemExit(f"--tree {spec!r}: expected NAME=PATH, PATH holding the rvcfast package")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu_convert import _check_dtypes, default_dtypes, dtype_notes, machine_line

    from rvcfast.testing import build_bench_models

    asked = args.dtype if args.dtype is not None else default_dtypes()
    refused, slow = _check_dtypes(asked)
    paths = build_bench_models(MODELS)
    machine = machine_line()
    print(machine)
    for line in dtype_notes(args.dtype is None, asked, refused, slow):
        print(line)
    print()
    results, failed = [], []
    for dtype in (d for d in asked if d not in refused):
        for name, tree in trees:
            try:
                res = _run(tree, dtype, CLIPS / "clip01.wav", CLIPS / "clip02.wav", paths)
            except RuntimeError as exc:  # the other trees and precisions still run
                print(f"FAILED: {exc}\n", flush=True)
                failed.append(f"{name}, {dtype}")
                continue
            print("\n".join(_table(name, dtype, res, args.top)), flush=True)
            results.append((f"{name}, {dtype}", res))
    if len(results) > 1:
        print(f"[{machine}]\n")
        print("\n".join(_compare(results)))
    if failed:
        print(f"\nfailed: {'; '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
