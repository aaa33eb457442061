"""Compare ns/action of this actionqueues with actionqueues==0.8.2 from PyPI.

Two paths, each a queue of 10 actions built and run per iteration:

* happy: 10 no-op actions, ``execute()``;
* fail: the 10th action's ``execute`` raises, caught, then ``rollback()``.

Both implementations import as ``actionqueues``, so 0.8.2 lives in its own
venv, ``benchmarks/.venv-082/``, created on first use. Each round runs one
subprocess per implementation (``_core_worker.py``, same body for both; the
order alternates between rounds) and the table reports the median and min over
rounds. Always exits 0 when the measurement ran: it is a measurement, not a test.

Run from the repo root::

    .venv/bin/python benchmarks/bench_core.py            # full run
    .venv/bin/python benchmarks/bench_core.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_core_worker.py"
VENV_082 = HERE / ".venv-082"
LEGACY_SPEC = "actionqueues==0.8.2"
TARGET_RATIO = 0.8
PATHS = ("happy", "fail")


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def installed_version(python: Path) -> str | None:
    code = "import importlib.metadata as m; print(m.version('actionqueues'))"
    proc = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_legacy_venv() -> Path:
    """Create ``benchmarks/.venv-082`` with actionqueues 0.8.2, if not there yet."""
    python = venv_python(VENV_082)
    if python.exists() and installed_version(python) == "0.8.2":
        return python
    print(f"creating {VENV_082} with {LEGACY_SPEC} ...", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV_082)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", LEGACY_SPEC],
        check=True,
    )
    version = installed_version(python)
    if version != "0.8.2":
        sys.exit(f"bench_core: {VENV_082} has actionqueues {version!r}, expected 0.8.2")
    return python


def run_worker(python: str, number: int, repeat: int, isolated: bool) -> dict[str, object]:
    cmd = [python]
    if isolated:
        cmd.append("-I")  # no PYTHONPATH / user site: nothing can shadow 0.8.2
    cmd += [str(WORKER), "--number", str(number), "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"bench_core: worker failed: {' '.join(cmd)}\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def fmt_ns(value: float) -> str:
    return f"{value:8.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds, each runs both (default 7)")
    parser.add_argument(
        "--number", type=int, default=20000, help="queues per timing (default 20000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timings per path per subprocess, min kept (5)"
    )
    parser.add_argument(
        "--python-ours",
        default=sys.executable,
        help="interpreter with this package installed (default: this one)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fast run: 3 rounds, 2000 queues, 3 repeats"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.number, args.repeat = 3, 2000, 3

    legacy_python = str(ensure_legacy_venv())
    impls = {"ours": (args.python_ours, False), "0.8.2": (legacy_python, True)}
    samples: dict[str, dict[str, list[float]]] = {
        impl: {path: [] for path in PATHS} for impl in impls
    }
    seen: dict[str, dict[str, object]] = {}

    for round_no in range(args.rounds):
        order = list(impls) if round_no % 2 == 0 else list(reversed(impls))
        for impl in order:
            python, isolated = impls[impl]
            result = run_worker(python, args.number, args.repeat, isolated)
            seen[impl] = result
            for path in PATHS:
                value = result[path]
                assert isinstance(value, float)
                samples[impl][path].append(value)
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

    legacy_file = str(seen["0.8.2"]["file"])
    if seen["0.8.2"]["version"] != "0.8.2" or not legacy_file.startswith(str(VENV_082)):
        sys.exit(f"bench_core: the 0.8.2 worker imported {legacy_file}")

    print(
        f"actionqueues ns/action, 10 actions/queue, {args.rounds} rounds x "
        f"{args.number} queues x {args.repeat} repeats (min per subprocess)"
    )
    for impl in impls:
        info = seen[impl]
        print(f"  {impl:6s} = {info['version']} (python {info['python']}) {info['file']}")
    print()
    header = (
        f"{'path':6s} | {'ours med':>8s} {'ours min':>8s} | {'0.8.2 med':>9s} {'0.8.2 min':>9s} "
        f"| {'ratio med':>9s} {'ratio min':>9s}"
    )
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    for path in PATHS:
        ours, legacy = samples["ours"][path], samples["0.8.2"][path]
        ours_med, legacy_med = statistics.median(ours), statistics.median(legacy)
        ratios[path] = ours_med / legacy_med
        ratio_min = min(ours) / min(legacy)
        print(
            f"{path:6s} | {fmt_ns(ours_med)} {fmt_ns(min(ours))} | "
            f"{fmt_ns(legacy_med):>9s} {fmt_ns(min(legacy)):>9s} | "
            f"{ratios[path]:9.3f} {ratio_min:9.3f}"
        )
    print()
    met = all(ratio <= TARGET_RATIO for ratio in ratios.values())
    detail = " ".join(f"{path}={ratio:.3f}" for path, ratio in ratios.items())
    verdict = "MET" if met else "NOT MET"
    print(f"target: ratio ours/0.8.2 <= {TARGET_RATIO} on both paths (median): {verdict}; {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
