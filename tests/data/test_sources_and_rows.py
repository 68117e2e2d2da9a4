import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_rlhf.data import DataError, RowSet
from lit_rlhf.data.rows import rename_columns, validate_text_rows
from lit_rlhf.data.sources import load_rows

ROWS = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_reads_each_file_format(tmp_path):
    jsonl = _write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["prompt", "response"])
        writer.writeheader()
        writer.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for path in (jsonl, tmp_path / "d.json", tmp_path / "d.csv", tmp_path / "d.parquet"):
        rowset = load_rows(str(path))
        assert rowset.rows == ROWS
        assert rowset.numbers == [1, 2]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        load_rows(str(tmp_path / "nope.jsonl"))


def test_jsonl_rows_are_numbered_by_line_even_with_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": ""}\n')
    rowset = load_rows(str(path))
    assert rowset.numbers == [1, 3]
    with pytest.raises(DataError, match=r"d.jsonl row 3: field 'response' is empty"):
        validate_text_rows(rowset, ("prompt", "response"))


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match="d.jsonl row 2: not valid JSON"):
        load_rows(str(path))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"response": "r"}, r"train.jsonl row 2: missing field 'prompt' \(columns present: response\)"),
        ({"prompt": "p", "response": "   "}, r"train.jsonl row 2: field 'response' is empty"),
        ({"prompt": 3, "response": "r"}, r"train.jsonl row 2: field 'prompt' must be a string, got int"),
        ({"prompt": "p", "response": None}, r"train.jsonl row 2: field 'response' must be a string, got NoneType"),
    ],
)
def test_bad_rows_raise_one_line_errors_naming_file_row_and_field(row, message):
    rowset = RowSet.numbered("train.jsonl", [ROWS[0], row], first=1)
    with pytest.raises(DataError, match=message) as info:
        validate_text_rows(rowset, ("prompt", "response"))
    assert "\n" not in str(info.value)


def test_rename_columns_maps_dataset_names_to_ours():
    rowset = RowSet.numbered("x", [{"question": "q", "answer": "a"}])
    renamed = rename_columns(rowset, {"prompt": "question", "response": "answer"})
    assert renamed.rows == [{"question": "q", "answer": "a", "prompt": "q", "response": "a"}]


def test_subset_keeps_source_numbers():
    rowset = RowSet.numbered("x", [{"i": i} for i in range(5)], first=1)
    part = rowset.subset("x part", [4, 1])
    assert part.numbers == [5, 2] and part.rows == [{"i": 4}, {"i": 1}]
