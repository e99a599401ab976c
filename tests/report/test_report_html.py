"""write_report: a self-contained, escaped HTML file with the loss plot, the table and samples."""

from __future__ import annotations

import base64
import html
import re

import pytest

from formerlab.errors import ConfigError, DataError
from formerlab.report import write_report
from formerlab.report.html import format_value, loss_curves, table_cells

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECORDS = [
    {"step": 10, "loss": 5.2, "lr": 1e-3, "tokens_per_s": 900.0},
    {"step": 20, "loss": 4.1, "lr": 1e-3, "tokens_per_s": 910.0},
    {"step": 20, "val_loss": 4.4, "accuracy": 0.12},
    {"step": 30, "loss": 3.3, "lr": 9e-4, "tokens_per_s": 905.0},
    {"step": 30, "val_loss": 3.6, "accuracy": 0.2},
]


def _images(text):
    return re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)


def test_report_has_plot_table_and_escaped_samples(tmp_path):
    sample = "if a < b and c > d:\n    print('<script>alert(1)</script>')"
    out = write_report(
        tmp_path / "run" / "report.html",
        title="Demo <run>",
        metrics_records=RECORDS,
        table=[{"model": "gpt-small-cpu", "val_loss": 3.6123, "params": 3290624}],
        samples=[sample],
        notes="trained & evaluated",
    )
    assert out == tmp_path / "run" / "report.html"
    text = out.read_text()
    (png,) = _images(text)
    assert base64.b64decode(png).startswith(PNG_MAGIC)
    for expected in ("gpt-small-cpu", "3.612", "3,290,624", "Demo &lt;run&gt;", "trained &amp;"):
        assert expected in text
    assert "<script>" not in text
    pres = re.findall(r"<pre>(.*?)</pre>", text, re.S)
    assert [html.unescape(p) for p in pres] == [sample]
    assert "&lt;script&gt;" in pres[0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temp file left


def test_dict_table_becomes_metric_value_rows(tmp_path):
    out = write_report(
        tmp_path / "r.html",
        title="t",
        metrics_records=RECORDS,
        table={"val_loss": 1.4236, "unigram entropy": 4.9871},
    )
    text = out.read_text()
    assert re.search(r"<th>metric</th>\s*<th>value</th>", text)
    assert re.search(r"<td>val_loss</td>\s*<td class=\"num\">1.424</td>", text)
    assert "4.987" in text


def test_self_contained_no_external_resources(tmp_path):
    text = write_report(
        tmp_path / "r.html", title="t", metrics_records=RECORDS, table={}
    ).read_text()
    assert not re.search(r'(src|href)="(?!data:)', text)


def test_no_losses_means_no_image(tmp_path):
    records = [{"step": 1, "lr": 0.1}]
    text = write_report(
        tmp_path / "r.html", title="t", metrics_records=records, table={}
    ).read_text()
    assert not _images(text)
    assert "No loss values were recorded" in text


def test_rewrite_replaces_file(tmp_path):
    path = tmp_path / "r.html"
    write_report(path, title="first", metrics_records=[], table={"a": 1})
    write_report(path, title="second", metrics_records=[], table={"a": 2})
    assert "second" in path.read_text() and "first" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_loss_curves_split_train_and_validation():
    curves = loss_curves(RECORDS)
    assert curves["train loss"] == ([10.0, 20.0, 30.0], [5.2, 4.1, 3.3])
    assert curves["validation loss"] == ([20.0, 30.0], [4.4, 3.6])


def test_table_cells_union_of_columns_in_order():
    columns, rows = table_cells([{"a": 1, "b": 2.5}, {"c": "x", "a": 3}])
    assert columns == ["a", "b", "c"]
    assert [[c["text"] for c in row] for row in rows] == [["1", "2.5", ""], ["3", "", "x"]]
    assert [c["numeric"] for c in rows[0]] == [True, True, False]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12345.678, "12,346"),
        (0.000123456, "0.0001235"),
        (3, "3"),
        (True, "true"),
        (None, ""),
        (float("nan"), "nan"),
        ("<b>", "<b>"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"table": "oops"}, ConfigError, "table: invalid value 'oops'"),
        ({"table": [{"a": 1}, 5]}, ConfigError, r"table\[1\]: invalid value 5"),
        ({"samples": "one string"}, ConfigError, "samples: invalid value"),
        ({"samples": ["ok", 3]}, ConfigError, r"samples\[1\]: invalid value 3"),
        ({"title": None}, ConfigError, "title: invalid value None"),
        ({"metrics_records": {"step": 1}}, ConfigError, "metrics_records: invalid value"),
        ({"metrics_records": [{"loss": 1.0}]}, DataError, r"metrics_records\[0\].step"),
        ({"metrics_records": [{"step": 1, "loss": "x"}]}, DataError, r"\[0\].loss: invalid"),
    ],
)
def test_bad_input_rejected_and_nothing_written(tmp_path, kwargs, error, match):
    args = {"title": "t", "metrics_records": RECORDS, "table": {}, **kwargs}
    with pytest.raises(error, match=match):
        write_report(tmp_path / "r.html", **args)
    assert not list(tmp_path.iterdir())
