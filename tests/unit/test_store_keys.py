"""Stable class keys (issue 13.6): the number keys belong to the library, on every backend.

A class keeps its key when classes are added, renamed, merged into it or deleted
around it; keys can be reassigned (a swap); old libraries are upgraded with the keys
their alphabetical order gave them; ``nmid library copy`` carries them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from library_fixture import Library, make_library

from nmid_desktop.core.errors import LabelError
from nmid_desktop.core.store import Store
from nmid_desktop.core.store import postgres as pg_backend
from nmid_desktop.core.store import sqlite as sqlite_backend
from nmid_desktop.core.store.copy import copy_library


def _keys(store: Store) -> dict[str, int | None]:
    return {c.name: c.key for c in store.classes()}


def _image(store: Store, folder: Path, name: str) -> int:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.png"
    path.write_bytes(name.encode())
    image_id, _ = store.add_image(
        path, sha256=hashlib.sha256(name.encode()).hexdigest(), page=0, n_pages=1, width=4, height=4, dtype="uint8"
    )
    return image_id


@pytest.fixture
def store(library: Library) -> Store:
    return library.open()


def test_a_new_class_takes_the_lowest_free_key_and_shifts_nobody(store: Store, tmp_path: Path) -> None:
    store.add_class("a")
    store.add_class("c")
    assert _keys(store) == {"a": 1, "c": 2}
    store.add_class("b")  # alphabetically between: the old rule would have moved c to 3
    assert _keys(store) == {"a": 1, "b": 3, "c": 2}
    # A class created by labelling takes one too.
    store.set_label(_image(store, tmp_path / "src", "x"), "d", source="expert")
    assert _keys(store)["d"] == 4
    for name in "efghijk":
        store.add_class(name)
    keys = _keys(store)
    assert sorted(k for k in keys.values() if k is not None) == list(range(1, 10))
    assert keys["j"] is None and keys["k"] is None  # past 9: no key, still selectable by typing


def test_rename_keeps_the_key_and_delete_frees_it(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.add_class(name)
    assert store.rename_class("b", "zz").key == 2
    assert _keys(store) == {"a": 1, "c": 3, "zz": 2}
    store.delete_class("a")
    assert _keys(store) == {"c": 3, "zz": 2}
    assert store.add_class("new").key == 1  # the freed key is the lowest free one


def test_merge_keeps_the_targets_key_and_frees_the_sources(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("a", "b", "c"):
        store.set_label(_image(store, src, name), name, source="expert")
    assert _keys(store) == {"a": 1, "b": 2, "c": 3}
    assert store.merge_classes("a", "c") == 1
    assert _keys(store) == {"b": 2, "c": 3}
    # Undo brings the source back with its own key; redo frees it again.
    store.undo()
    assert _keys(store) == {"a": 1, "b": 2, "c": 3}
    store.redo()
    assert _keys(store) == {"b": 2, "c": 3}
    assert store.add_class("d").key == 1
    # Merging into a class that does not exist yet is a rename: the new class keeps the source's key.
    store.merge_classes("b", "brand-new")
    assert _keys(store) == {"brand-new": 2, "c": 3, "d": 1}


def test_reassigning_a_key_swaps_with_its_holder_in_one_change(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.add_class(name)
    version = store.labels_version()
    changed = store.set_class_key("c", 1)
    assert {(c.name, c.key) for c in changed} == {("c", 1), ("a", 3)}
    assert _keys(store) == {"a": 3, "b": 2, "c": 1}
    assert store.labels_version() > version  # other windows refresh their chips
    assert store.set_class_key("c", 1) == []  # already so: nothing changes
    assert [c.name for c in store.set_class_key("b", 7)] == ["b"]  # a free key: no swap
    assert store.set_class_key("b", None)[0].key is None
    assert _keys(store) == {"a": 3, "b": None, "c": 1}
    # A class without a key that takes a held one leaves the holder without.
    store.set_class_key("b", 3)
    assert _keys(store) == {"a": None, "b": 3, "c": 1}
    for bad in (0, 10, -1, True):
        with pytest.raises(LabelError, match="digit 1-9"):
            store.set_class_key("a", bad)
    with pytest.raises(LabelError, match="no class"):
        store.set_class_key("nothing", 2)
    assert _keys(store) == {"a": None, "b": 3, "c": 1}


def test_keys_are_the_same_for_every_user_of_the_library(library: Library) -> None:
    ann = library.open(user="ann")
    bob = library.open(user="bob")
    ann.add_class("a")
    ann.add_class("b")
    bob.set_class_key("a", 2)
    assert _keys(ann) == {"a": 2, "b": 1}
    assert bob.add_class("c").key == 3


def test_a_failed_change_leaves_keys_as_they_were(store: Store) -> None:
    for name in ("a", "b"):
        store.add_class(name)
    with pytest.raises(LabelError), store.transaction():
        store.set_class_key("a", 2)
        assert _keys(store) == {"a": 2, "b": 1}
        raise LabelError("abandoned")
    assert _keys(store) == {"a": 1, "b": 2}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_old_library_is_upgraded_with_its_alphabetical_keys(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = make_library(backend, tmp_path, request)
    module = sqlite_backend if backend == "sqlite" else pg_backend
    names = ["k", "b", "j", "a", "i", "c", "h", "d", "g", "e", "f"]  # 11 classes, inserted out of order
    # The schema just before the class keys' migration (later versions may follow it).
    before = next(i for i, steps in enumerate(module.MIGRATIONS) if any("ADD COLUMN key " in s for s in steps))
    with monkeypatch.context() as old:
        old.setattr(module, "MIGRATIONS", module.MIGRATIONS[:before])
        old.setattr(module, "SCHEMA_VERSION", before)
        store = lib.open()
        for name in names:  # the previous schema has no key column: write rows as its code did
            store._q("INSERT INTO classes (name, created_at) VALUES (?, 'then')", (name,))  # type: ignore[attr-defined]
        store.close()
    store = lib.open()
    expected = {name: (i + 1 if i < 9 else None) for i, name in enumerate(sorted(names))}
    assert _keys(store) == expected
    assert store.add_class("l").key is None  # 1-9 all held
    store.delete_class("c")
    assert store.add_class("m").key == 3
    store.close()


def test_library_copy_carries_keys_both_ways(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    first = make_library("sqlite", tmp_path, request, "first")
    shared = make_library("postgresql", tmp_path, request, "shared")
    back = make_library("sqlite", tmp_path, request, "back")
    src = first.open()
    for name in ("a", "b", "c"):
        src.add_class(name)
    src.set_class_key("c", 1)
    src.set_class_key("b", 9)
    pg = shared.open()
    for _ in copy_library(src, pg):
        pass
    assert _keys(pg) == {"a": 3, "b": 9, "c": 1}
    assert pg.add_class("d").key == 2  # the copy is a working library: the free keys follow
    dst = back.open()
    for _ in copy_library(pg, dst):
        pass
    assert _keys(dst) == {"a": 3, "b": 9, "c": 1, "d": 2}
    for store in (src, pg, dst):
        store.close()


def test_classes_created_at_once_by_many_clients_get_distinct_keys(library: Library) -> None:
    import threading

    stores = [library.open(user=f"user{i}") for i in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def create(store: Store, i: int) -> None:
        try:
            start.wait()
            for j in range(3):
                store.add_class(f"c{i}-{j}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = [k for k in _keys(stores[0]).values() if k is not None]
    assert len(_keys(stores[0])) == 12 and sorted(keys) == list(range(1, 10))  # each key once, none lost
