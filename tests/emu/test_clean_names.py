"""``overlaysim clean`` removes containers' resolv.conf and UTS files, only ours."""

from __future__ import annotations

from pathlib import Path

from overlaysim.emu.clean import _sweep_name_files


def test_only_prefixed_resolv_conf_and_uts_files_go(tmp_path: Path) -> None:
    etc, uts = tmp_path / "netns", tmp_path / "uts"
    for d in ("osimab-h1-web.1", "osimab-h2-c1", "other-ns"):
        (etc / d).mkdir(parents=True)
        (etc / d / "resolv.conf").write_text("nameserver 127.0.0.11\n")
    (etc / "osimab-h2-c1" / "hosts").write_text("not ours\n")
    uts.mkdir()
    for f in ("osimab-h1-web.1", "someone-else"):
        (uts / f).touch()
    lines: list[str] = []
    _sweep_name_files("osim", True, lines.append, etc_root=etc, uts_root=uts)
    assert len(lines) == 3 and (etc / "osimab-h1-web.1" / "resolv.conf").exists()  # dry run
    lines.clear()
    _sweep_name_files("osim", False, lines.append, etc_root=etc, uts_root=uts)
    assert len(lines) == 3
    assert not (etc / "osimab-h1-web.1").exists()
    assert (etc / "osimab-h2-c1" / "hosts").exists()  # a file we did not write stays
    assert not (etc / "osimab-h2-c1" / "resolv.conf").exists()
    assert (etc / "other-ns" / "resolv.conf").exists()
    assert sorted(p.name for p in uts.iterdir()) == ["someone-else"]
