"""The image walker every listing uses: links followed, a cycle named, a folder reached twice is no cycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.walk import images_below, list_folder
from utilities.errors import UserError


def never(name: str) -> bool:
    return False


def test_a_folder_reached_by_two_links_is_listed_twice_and_is_no_cycle(tmp_path: Path) -> None:
    (tmp_path / "store" / "cat").mkdir(parents=True)
    (tmp_path / "store" / "cat" / "a.JPG").write_bytes(b"")
    (tmp_path / "store" / "cat" / "notes.txt").write_text("")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "one").symlink_to(tmp_path / "store" / "cat")
    (tmp_path / "root" / "two").symlink_to(tmp_path / "store" / "cat")
    (tmp_path / "root" / "b.png").symlink_to(tmp_path / "store" / "cat" / "a.JPG")
    assert images_below(tmp_path / "root", never) == ["b.png", "one/a.JPG", "two/a.JPG"]
    assert list_folder(tmp_path / "root", never) == (["one", "two"], ["b.png"])
    assert images_below(tmp_path / "root", lambda name: name == "two") == ["b.png", "one/a.JPG"]


def test_a_link_to_a_folder_above_the_root_is_a_cycle_naming_the_link(tmp_path: Path) -> None:
    (tmp_path / "root" / "cat").mkdir(parents=True)
    (tmp_path / "root" / "cat" / "up").symlink_to(tmp_path)
    with pytest.raises(UserError) as caught:
        images_below(tmp_path / "root" / "cat", never)
    link = tmp_path / "root" / "cat" / "up"
    assert str(caught.value) == (
        f"link cycle: {link} -> {tmp_path} leads back to {tmp_path}, which contains it; remove the link or point "
        "it elsewhere"
    )
