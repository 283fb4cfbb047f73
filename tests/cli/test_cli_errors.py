"""Every CLI command reports a runtime error as one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlaysim import cli
from overlaysim.sim import runner as sim_runner

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _subparsers(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = list(_subparsers(sub))
                if nested:
                    yield from (([name, *path], p) for path, p in nested)
                else:
                    yield [name], sub


def _argv(path: list[str], sub: argparse.ArgumentParser) -> list[str]:
    """The command with a placeholder for each positional argument and required option."""
    args = list(path)
    for action in sub._actions:
        if action.option_strings:
            if action.required:
                args += [action.option_strings[0], "1"]
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        args += ["true"] if action.nargs == argparse.REMAINDER else ["x"]
    for group in sub._mutually_exclusive_groups:  # e.g. animate's --entry | --crash | --join
        if group.required:
            args += [group._group_actions[0].option_strings[0], "1"]
    return args


COMMANDS = [_argv(path, sub) for path, sub in _subparsers(cli.build_parser())]


def test_every_command_is_covered() -> None:
    names = {" ".join(a[:2]) if a[0] in ("network", "service") else a[0] for a in COMMANDS}
    assert {"validate", "sim", "sweep", "run", "report", "compare", "doctor", "clean"} <= names
    assert {"network create", "service ls", "inspect", "exec", "up", "lab"} <= names


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_an_internal_error_in_any_command_is_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = cli.build_parser

    def boom(args: argparse.Namespace) -> int:
        raise KeyError("a bug\nwith a second line")

    def patched() -> argparse.ArgumentParser:
        parser = real()
        for _, sub in _subparsers(parser):
            sub.set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    monkeypatch.delenv("OVERLAYSIM_DEBUG", raising=False)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("overlaysim: error: KeyError:"), err


def test_a_failed_simulation_names_the_cause_and_the_partial_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(env, duration, progress, name):  # type: ignore[no-untyped-def]
        env.run(until=5)
        raise ValueError("the model broke")

    monkeypatch.setattr(sim_runner, "_run_env", broken)
    out = tmp_path / "partial"
    assert cli.main(["sim", str(QUICKSTART), "-q", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "ValueError: the model broke" in err and str(out) in err
    assert '"status": "failed"' in (out / "manifest.json").read_text()


def test_an_interrupted_simulation_exits_130_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def ctrl_c(env, duration, progress, name):  # type: ignore[no-untyped-def]
        env.run(until=5)
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_runner, "_run_env", ctrl_c)
    out = tmp_path / "partial"
    assert cli.main(["sim", str(QUICKSTART), "-q", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err == f"overlaysim: run interrupted; what it collected is in {out}\n"
    assert '"status": "interrupted"' in (out / "manifest.json").read_text()


def test_report_on_a_missing_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", str(tmp_path / "nothing")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nduration: 10\ntopology: {generator: star, hosts: 3}\n" + text, encoding="utf-8"
    )
    return path


def test_validate_is_a_dry_run_that_finds_overlap_and_exhaustion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(
        tmp_path,
        "networks:\n"
        "  - {name: a, subnet: 10.1.0.0/16}\n"
        "  - {name: b, subnet: 10.1.5.0/24}\n"
        "  - {name: tiny, subnet: 10.9.0.0/30}\n"
        "containers: {per_host: 3, networks: [tiny]}\n"  # a bare generator mapping
        "events:\n"
        "  - {at: 1, action: attach, container: x1, host: h1, network: tiny}\n",
    )
    assert cli.main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[0] == (
        f"overlaysim: error: {path}: networks[1]: "
        "network b subnet 10.1.5.0/24 overlaps network a subnet 10.1.0.0/16"
    )
    exhausted = [ln for ln in lines if "no free address" in ln]
    assert len(exhausted) == 9  # one usable address on the /30: 8 of 9 containers, then x1
    assert any(ln.startswith(f"{path}: events[0]: container x1 on h1") for ln in exhausted)
    # sim refuses the same scenario before creating anything
    out = tmp_path / "never"
    assert cli.main(["sim", str(path), "-q", "--out", str(out)]) == 2
    assert not out.exists()


def test_validate_accepts_a_bare_generator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scenario(
        tmp_path,
        "networks: [{name: web, subnet: 10.1.0.0/24}]\n"
        "containers: {per_host: 2, networks: [web]}\n"
        "events:\n"
        "  - {at: 1, action: detach, container: c-h1-1}\n",
    )
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid scenario 's' (dry run: 1 steps, 5 containers at the end)" in out
