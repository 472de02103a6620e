"""Result files and the VTAB report on fixture records: exactly the expected numbers."""

from __future__ import annotations

import csv
import io
import json

import pytest

from liera_vision.vtab import SUITES, append_jsonl_atomic, read_jsonl, write_json_atomic
from liera_vision.vtab.report import build_table, main, report

NATURAL, SPECIALIZED, STRUCTURED = SUITES["vtab-1k"][:7], SUITES["vtab-1k"][7:11], SUITES["vtab-1k"][11:]


def write_run(path, method, accs: dict[str, tuple[float, float]], seed=0):
    for task, (final, best) in accs.items():
        append_jsonl_atomic(path / "results.jsonl",
                            {"method": method, "task": task, "acc_final": final, "acc_best": best, "seed": seed})
    return path


@pytest.fixture
def runs(tmp_path):
    # method A: natural 70 %, specialized 80 %, structured 60 % (best: +1 point everywhere)
    a = {t: (0.70, 0.71) for t in NATURAL}
    a |= {t: (0.80, 0.81) for t in SPECIALIZED} | {t: (0.60, 0.61) for t in STRUCTURED}
    write_run(tmp_path / "A", "A", a)
    # method B: every task 50 %, except cifar, which has two seeds (40 % and 60 %: mean 50 %) and a rerun of seed 0
    b = {t: (0.5, 0.5) for t in SUITES["vtab-1k"] if t != "cifar"}
    write_run(tmp_path / "B", "B", {"cifar100": (0.1, 0.1)} | b)  # superseded by the later seed-0 record
    write_run(tmp_path / "B", "B", {"cifar": (0.4, 0.45)}, seed=0)
    write_run(tmp_path / "B", "B", {"cifar": (0.6, 0.65)}, seed=1)
    # method C: only two tasks
    write_run(tmp_path / "C", "C", {"dtd": (0.30, 0.35), "kitti": (0.90, 0.90)})
    return tmp_path


def rows(table):
    return {row.label: {m: (None if v is None else round(v, 6)) for m, v in row.values.items()} for row in table.rows}


def test_table_numbers(runs):
    records = [r for m in "ABC" for r in read_jsonl(runs / m / "results.jsonl")]
    final = rows(build_table(records, "final"))
    assert final["cifar"] == {"A": 70.0, "B": 50.0, "C": None}
    assert final["dtd"] == {"A": 70.0, "B": 50.0, "C": 30.0}
    assert final["natural mean"] == {"A": 70.0, "B": 50.0, "C": None}
    assert final["specialized mean"] == {"A": 80.0, "B": 50.0, "C": None}
    assert final["structured mean"] == {"A": 60.0, "B": 50.0, "C": None}
    assert final["mean of the 19 tasks"] == {"A": round(1290 / 19, 6), "B": 50.0, "C": None}  # 67.894737
    assert final["mean of the 3 group means"] == {"A": 70.0, "B": 50.0, "C": None}
    best = rows(build_table(records, "best"))
    assert best["cifar"] == {"A": 71.0, "B": 55.0, "C": None}
    assert best["mean of the 19 tasks"]["A"] == round((7 * 71 + 4 * 81 + 8 * 61) / 19, 6)  # 68.894737
    assert best["natural mean"]["B"] == round((6 * 50 + 55) / 7, 6)  # 50.714286


def test_markdown_csv_png(runs, tmp_path):
    markdown, tables = report([runs / "A", runs / "B", runs / "C"], out_dir=tmp_path / "out")
    lines = markdown.splitlines()
    assert lines[0] == "**vtab-1k top-1 accuracy (%), final (after the last epoch)**"
    assert "| group | task | A | B | C |" in lines
    assert "| natural | dtd | 70.0 | 50.0 | 30.0 |" in lines
    assert "|  | **mean of the 19 tasks** | 67.9 | 50.0 | – |" in lines
    assert "|  | **mean of the 3 group means** | 70.0 | 50.0 | – |" in lines
    assert any(line.startswith("C: no result for cifar, caltech101,") for line in lines)
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "vtab_report.csv").read_text())))
    assert len(table) == 2 * (19 + 3 + 2)
    mean = next(r for r in table if r["metric"] == "final" and r["kind"] == "mean_tasks")
    assert (mean["A"], mean["B"], mean["C"]) == ("67.8947", "50.0000", "")
    assert (tmp_path / "out" / "vtab_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "vtab_report.md").read_text() == markdown


def test_cli_reads_a_folder_of_runs(runs, capsys):
    assert main([str(runs), "--metric", "final"]) == 0
    out = capsys.readouterr().out
    assert "| natural | cifar | 70.0 | 50.0 ± 14.1 | – |" in out and "best over" not in out  # B: 2 seeds, 40 and 60
    assert (runs / "vtab_report.png").is_file()


def test_bad_result_files(tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl_atomic(path, {"method": "A", "task": "dtd", "acc_final": 0.5, "acc_best": 0.5})
    with path.open("a") as fh:
        fh.write('{"method": "A", "task": "dtd"}\n{not json\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: result record lacks \['acc_final', 'acc_best'\]"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match=r"missing does not exist \(expected a result file or a run folder\)"):
        report([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no results.jsonl or result.json in it or below it"):
        report([tmp_path / "empty"])
    mixed = [{"method": "A", "task": "dtd", "acc_final": 0.5, "acc_best": 0.5},
             {"method": "A", "task": "synth_shape", "acc_final": 0.5, "acc_best": 0.5}]
    with pytest.raises(ValueError, match=r"results mix task suites \['synthetic', 'vtab-1k'\]"):
        build_table(mixed)
    with pytest.raises(ValueError, match=r"outside the registry: \['mnist'\]"):
        build_table([{"method": "A", "task": "mnist", "acc_final": 0.5, "acc_best": 0.5}])


def test_append_keeps_earlier_lines_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run" / "results.jsonl"
    for i in range(3):
        append_jsonl_atomic(path, {"method": "A", "task": f"t{i}", "acc_final": i / 10, "acc_best": i / 10})
    assert [json.loads(line)["task"] for line in path.read_text().splitlines()] == ["t0", "t1", "t2"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.jsonl", "results.jsonl.lock"]
    assert path.stat().st_mode & 0o044  # readable by others (mkstemp alone would leave it 0600)
    with pytest.raises(ValueError, match=r"record: result record lacks \['acc_best'\]"):
        append_jsonl_atomic(path, {"method": "A", "task": "t3", "acc_final": 0.3})
    assert len(path.read_text().splitlines()) == 3


def test_single_runs_sweeps_and_mixtures(tmp_path):
    """A train_vtab.py fit folder (result.json, no results.jsonl), a sweep folder (whose task folders hold the same
    records as its results.jsonl: counted once) and a loose result file, alone or together."""
    single = tmp_path / "runs" / "lora-r8" / "dtd"
    write_json_atomic(single / "result.json", {"method": "lora-r8", "task": "dtd", "acc_final": 0.4, "acc_best": 0.5})
    (single / "checkpoints").mkdir()
    write_json_atomic(single / "checkpoints" / "result.json", {"method": "X", "task": "dtd", "acc_final": 1,
                                                               "acc_best": 1})  # never inside a run folder
    sweep = tmp_path / "runs" / "liera_r8"
    for task, acc in (("dtd", 0.6), ("cifar100", 0.7)):
        record = {"method": "liera_r8", "task": task, "acc_final": acc, "acc_best": acc}
        write_json_atomic(sweep / task / "result.json", record)
        append_jsonl_atomic(sweep / "results.jsonl", record)
    loose = tmp_path / "kitti.json"
    write_json_atomic(loose, {"method": "lora-r8", "task": "kitti", "acc_final": 0.9, "acc_best": 0.9})

    assert rows(report([single])[1][0])["dtd"] == {"lora-r8": 40.0}
    markdown, tables = report([tmp_path / "runs", loose], out_dir=tmp_path / "out")
    final = rows(tables[0])
    assert final["dtd"] == {"lora-r8": 40.0, "liera_r8": 60.0} and final["cifar"] == {"lora-r8": None, "liera_r8": 70.0}
    assert final["kitti"] == {"lora-r8": 90.0, "liera_r8": None}
    assert tables[0].methods == ["liera_r8", "lora-r8"] and "X" not in markdown


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    expected = f"{tmp_path / 'nowhere'} does not exist (expected a result file or a run folder)"
    assert err == f"vtab_report: error: {expected}\n"
    (tmp_path / "results.jsonl").write_text("{broken\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtab_report: error: ") and "results.jsonl:1: not a JSON object" in err
    assert err.count("\n") == 1


def test_spread_over_seeds_parameters_and_chance(tmp_path):
    """Two seeds of a real-mini run: mean ± std per task and of each mean (computed seed by seed), the trainable
    parameters (a range when the heads differ), the chance level of every task."""
    accs = {0: {"sk_digits": 0.9, "sk_texture": 0.5, "sk_rotation": 0.4}, 1: {"sk_digits": 0.7, "sk_texture": 0.7,
                                                                               "sk_rotation": 0.4}}
    params = {"sk_digits": 1_926, "sk_texture": 1_605, "sk_rotation": 1_284}
    for seed, tasks in accs.items():
        for task, acc in tasks.items():
            append_jsonl_atomic(tmp_path / f"s{seed}" / "results.jsonl",
                                {"method": "linear", "task": task, "acc_final": acc, "acc_best": acc, "seed": seed,
                                 "trainable_params": params[task]})
    markdown, tables = report([tmp_path], out_dir=tmp_path / "out", metrics=("final",))
    spread = {row.label: row.spread["linear"] for row in tables[0].rows}
    assert spread["sk_digits"] == pytest.approx(14.142136) and spread["sk_rotation"] == 0.0
    # per-seed means of the 3 tasks: 60.0 and 60.0 -> no spread, although two tasks vary
    assert spread["mean of the 3 tasks"] == 0.0 and spread["specialized mean"] == pytest.approx(14.142136)
    lines = markdown.splitlines()
    assert "| natural | sk_digits | 80.0 ± 14.1 |" in lines
    assert "|  | **mean of the 3 tasks** | 60.0 ± 0.0 |" in lines
    assert "|  | trainable parameters | 1,284–1,926 |" in lines
    assert "chance (100 / classes): sk_digits 10.0, sk_texture 16.7, sk_rotation 25.0; mean of the tasks 17.2" in lines
    assert (tmp_path / "out" / "vtab_report.png").stat().st_size > 10_000
