"""The README's examples, the demo and the command line."""

from __future__ import annotations

import io
import random
import re
import subprocess
import sys
import time
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from actionqueues._cli import _use_color, main
from actionqueues._demo import run_demo

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def run_example(source: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[float]]:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    out = io.StringIO()
    module = types.ModuleType("readme_example")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, "readme_example", module)
    with redirect_stdout(out):
        exec(compile(source, str(README), "exec"), module.__dict__)
    return out.getvalue(), sleeps


def test_readme_has_the_expected_examples() -> None:
    assert len(readme_examples()) == 12


@pytest.mark.parametrize(
    "position",
    range(2, 10),
    ids=["policies", "async", "function-steps", "groups", "events", "otel", "testing", "durable"],
)
def test_readme_feature_examples_run_and_check_themselves(
    position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, sleeps = run_example(readme_examples()[position], monkeypatch)
    assert sleeps == []  # every example injects its sleep or turns backoff off
    if position == 4:
        assert out == "rolled back user 1: card declined for 30\n"


def test_readme_usage_example_rolls_back_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = run_example(readme_examples()[0], monkeypatch)
    assert out == "sign-up failed (card declined); undone: 2 steps\n"


def test_readme_retry_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    _, sleeps = run_example(readme_examples()[1], monkeypatch)
    assert sleeps == []  # the example injects its own recorder


@pytest.mark.parametrize("seed", range(12))
def test_seed_example_one_follows_the_rules_for_any_random_outcome(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    random.seed(seed)
    out, sleeps = run_example(readme_examples()[-2], monkeypatch)
    lines = out.splitlines()
    assert all(s == 0 for s in sleeps)
    assert lines, "the example prints what it does"
    failed = [line for line in lines if "Throwing failure" in line]
    if failed:
        # rollback runs on the failed action and every one before it, newest first
        last = failed[0].split()[0]
        expected = ["b", "a"] if last == "b" else ["a"]
        assert [line.split()[0] for line in lines if "Rolling back" in line] == expected
    else:
        assert not any("Rolling back" in line for line in lines)
    assert all("Retry" not in line or "retry exception" in line for line in lines)


def test_seed_example_two_retries_five_times_with_doubling_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, sleeps = run_example(readme_examples()[-1], monkeypatch)
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert out.splitlines() == [f"Executing action {n}" for n in range(1, 7)] + ["boom"]


def test_demo_retries_then_rolls_back_and_leaves_no_rows() -> None:
    out = io.StringIO()
    sleeps: list[float] = []
    ticks = iter(range(1000))
    assert run_demo(out, sleep=sleeps.append, clock=lambda: next(ticks) / 1000) == 0
    text = out.getvalue()
    assert sleeps == [0.1]
    assert "503 Service Unavailable: will retry" in text
    assert "attempt 1 asked for a retry: backing off 100 ms" in text
    assert "deleted billing_customers row 2" in text
    assert "deleted users row 2" in text
    assert "bob@example.com    users: 0, billing_customers: 0, mailing_list: 0" in text
    assert "alice@example.com  users: 1, billing_customers: 1, mailing_list: 1" in text
    assert "no rows left behind for bob" in text
    assert "\033[" not in text
    # the undo lines come newest first
    undo = [line for line in text.splitlines() if "↩" in line and "queue" not in line]
    assert [line.split("↩")[1].split()[0] for line in undo] == ["mailing", "billing", "user"]


def test_demo_colours_when_asked() -> None:
    out = io.StringIO()
    run_demo(out, color=True, sleep=lambda s: None)
    assert "\033[32m" in out.getvalue()


def test_cli_demo_runs_through_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)  # the demo's default sleep
    monkeypatch.setattr(
        "actionqueues._demo.run_demo.__kwdefaults__",
        {"color": False, "sleep": sleeps.append, "clock": time.perf_counter},
    )
    assert main(["demo", "--color", "never"]) == 0
    assert "no rows left behind for bob" in capsys.readouterr().out
    assert sleeps == [0.1]


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("actionqueues ")


def test_cli_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_main_module_runs_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    monkeypatch.setattr(sys, "argv", ["actionqueues", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("actionqueues", run_name="__main__")
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("actionqueues ")


def test_python_dash_m_runs_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actionqueues", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("actionqueues ")


class FakeTTY(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("choice", "env", "tty", "expected"),
    [
        ("always", {}, False, True),
        ("never", {}, True, False),
        ("auto", {}, True, True),
        ("auto", {}, False, False),
        ("auto", {"NO_COLOR": "1"}, True, False),
        ("auto", {"FORCE_COLOR": "1"}, False, True),
        ("auto", {"TERM": "dumb"}, True, False),
    ],
)
def test_colour_choice(
    choice: str, env: dict[str, str], tty: bool, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _use_color(FakeTTY(tty), choice) is expected
