"""The VTAB-1k task registry: class counts and groups of Zhai et al. (arXiv:1910.04867) in NOAH's get_vtab1k.py
layout; one alias resolver."""

from __future__ import annotations

import pytest

from liera_vision.vtab import SUITES, TASKS, canonical_name, find_task, get_task, groups, select_tasks


def test_the_19_tasks_their_classes_and_groups():
    vtab = SUITES["vtab-1k"]
    assert len(vtab) == 19
    assert {name: TASKS[name].num_classes for name in vtab} == {
        "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
        "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
        "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
        "smallnorb_azi": 18, "smallnorb_ele": 9}
    assert {g: len(ts) for g, ts in groups("vtab-1k").items()} == {"natural": 7, "specialized": 4, "structured": 8}


def test_aliases_resolve():
    assert get_task("cifar100").name == "cifar" and get_task("cifar100").num_classes == 100
    assert get_task("oxford_pet").name == "oxford_iiit_pet"
    assert find_task("cifar100") is TASKS["cifar"] and find_task("my_task") is None
    assert [canonical_name(n) for n in ("cifar100", "cifar", "oxford_pet", "my_task")] == [
        "cifar", "cifar", "oxford_iiit_pet", "my_task"]


def test_one_alias_resolver():
    """Aliases are resolved by tasks.find_task only: no other module of the package reads ALIASES or aliases."""
    import ast
    from pathlib import Path

    import liera_vision.vtab as vtab

    readers = set()
    for path in Path(vtab.__file__).parent.glob("*.py"):
        if path.name in ("tasks.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Name) and node.id == "ALIASES") or (
                    isinstance(node, ast.Attribute) and node.attr == "aliases"):
                readers.add(path.name)
    assert not readers, readers


def test_select_tasks():
    assert select_tasks("all") == SUITES["vtab-1k"]
    assert select_tasks("specialized") == ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
    assert select_tasks("dtd, cifar100,dtd") == ["dtd", "cifar"]
    assert select_tasks(["natural", "kitti"])[-2:] == ["sun397", "kitti"]
    assert select_tasks("all", suite="synthetic") == ["synth_shape", "synth_count", "synth_position",
                                                      "synth_orientation"]


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match=r"unknown task 'imagenet'; VTAB-1k tasks: \['cifar'"):
        get_task("imagenet")
    with pytest.raises(ValueError, match="no task selected"):
        select_tasks(" , ")
    with pytest.raises(ValueError, match="unknown suite 'vtab'"):
        select_tasks("all", suite="vtab")
