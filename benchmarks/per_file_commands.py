"""One ``rvcfast convert`` command per file, loading the models each time or sent to a running server.

    python benchmarks/per_file_commands.py                      # 12 files of batch12, 2 rounds
    python benchmarks/per_file_commands.py --files 4 --rounds 3
    python benchmarks/per_file_commands.py --small --files 2 --rounds 1   # smoke test: figures meaningless

A shell loop that starts ``rvcfast convert`` once per file (how scripts written for Applio's
CLI convert a folder) pays imports and model loading for every file. This measures the same
loop two ways, alternated round by round: ``local`` (each command loads the full-size models
itself) and ``server`` (each command is the same plus ``--server URL``, to one ``rvcfast serve``
started before the rounds, whose start-up is reported apart). Both use ``--no-noise``, so their
outputs are compared too (they must be equal). For the figure that matters most, one command
for the whole folder, see ``cpu_convert.py``. Every figure line carries the CPU (``lscpu``'s model).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_convert import MODELS, SHARED, machine_line  # noqa: E402


def _serve(models: dict[str, Path], voices: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """``rvcfast serve`` of ``voices`` on a free port; the process, its address and its start-up seconds."""
    t0 = time.perf_counter()
    out = open(log, "w")  # noqa: SIM115 - held by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "rvcfast", "serve", str(voices), "--host", "127.0.0.1", "--port", "0", "--encoder",
         str(models["encoder"]), "--f0-weights", str(models["f0_weights"]), "--device", "cpu", "--no-access-log",
         "--log-level", "warning"],
        stdout=out, stderr=subprocess.STDOUT, env=_env(),
    )
    deadline = time.monotonic() + 300
    while not (m := re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text())
        time.sleep(0.1)
    import urllib.request

    while True:  # healthy: the models are loaded
        try:
            with urllib.request.urlopen(f"{m.group(1)}/health", timeout=5) as answer:  # noqa: S310
                if answer.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()) from None
        time.sleep(0.2)
    return proc, m.group(1), time.perf_counter() - t0


def _env() -> dict[str, str]:
    return {**os.environ, "RVCFAST_PROFILE": "off", "PYTHONPATH": str(REPO)}


def _loop(commands: list[list[str]]) -> float:
    """Seconds to run ``commands`` one after the other, each a fresh process."""
    t0 = time.perf_counter()
    for cmd in commands:
        subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=Path, default=SHARED / "audio" / "batch12", help="folder of the inputs (default: batch12)")
    p.add_argument("--files", type=int, default=12, help="files converted, one command each (default 12)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of each loop, alternated (default 2)")
    p.add_argument("--small", action="store_true", help="tiny models: checks the script, measures nothing")
    args = p.parse_args(argv)
    from rvcfast.testing import build_bench_models

    files = sorted(args.inputs.glob("*.wav"))[: args.files]
    if not files:
        p.error(f"no .wav files in {args.inputs}")
    models = build_bench_models(MODELS, small=args.small)
    machine = machine_line()
    print(f"# {machine}")
    print(f"# {len(files)} files of {args.inputs}, one `rvcfast convert` per file; models {models['model'].parent}"
          f"{' (SMALL: figures meaningless)' if args.small else ''}; {args.rounds} rounds, alternated")
    work = Path(tempfile.mkdtemp(prefix="per-file-"))
    try:
        voices = work / "voices"
        voices.mkdir()
        shutil.copy(models["model"], voices / "voice.pth")
        shutil.copy(models["index"], voices / "voice.index")
        proc, url, started = _serve(models, voices, work / "server.log")
        print(f"server start-up (imports, models loaded, healthy): {started:.1f} s  [{machine}]")
        common = ["--no-noise", "-q"]
        local = [[sys.executable, "-m", "rvcfast", "convert", str(models["model"]), str(f), "-o", str(work / "local"),
                  "--index", str(models["index"]), "--encoder", str(models["encoder"]), "--f0-weights",
                  str(models["f0_weights"]), "--device", "cpu", *common] for f in files]
        remote = [[sys.executable, "-m", "rvcfast", "convert", "voice", str(f), "-o", str(work / "server"),
                   "--server", url, *common] for f in files]
        times: dict[str, list[float]] = {"local": [], "server": []}
        try:
            for r in range(args.rounds):
                for name, commands in (("local", local), ("server", remote)):
                    seconds = _loop(commands)
                    times[name].append(seconds)
                    print(f"round {r}: {name:6s} {seconds:7.2f} s  ({seconds / len(files):.2f} s a file)  [{machine}]", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
        import soundfile as sf

        same = all(
            (sf.read(work / "local" / f"{f.stem}.wav")[0] == sf.read(work / "server" / f"{f.stem}.wav")[0]).all() for f in files
        )
        lm, sm = statistics.median(times["local"]), statistics.median(times["server"])
        print(f"# medians [{machine}]")
        print(f"    local : {lm:7.2f} s ({lm / len(files):.2f} s a file)")
        print(f"    server: {sm:7.2f} s ({sm / len(files):.2f} s a file), plus {started:.1f} s once to start the server")
        print(f"    local / server: {lm / sm:.2f}x; outputs {'equal' if same else 'DIFFERENT'}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
