"""User CSV/TSV/JSONL files -> TaskData, and every bad-input case as a one-line UsageError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learners.errors import UsageError
from learners.harness.user_data import load_user_data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def csv_pair(tmp_path):
    train = write(tmp_path / "train.csv", 'text,label\n"good, really",pos\nbad,neg\n"so ""fine""",pos\n')
    dev = write(tmp_path / "dev.csv", "text,label\nmeh,neg\ngreat,pos\n")
    return train, dev


def test_csv_single_text_string_labels(csv_pair):
    data = load_user_data(*csv_pair, text_columns=None)
    assert data.name == "custom"
    assert data.text_columns == ("text",)
    assert data.label_names == ["neg", "pos"]
    assert not data.is_regression and data.num_labels == 2
    assert data.metric_kind == "accuracy_macro_f1"
    assert data.extra_validation == {}
    assert data.train.to_dict() == {"text": ["good, really", "bad", 'so "fine"'], "label": [1, 0, 1]}
    assert data.train.features["label"].dtype == "int64"
    assert data.validation["label"] == [0, 1]


def test_tsv_pair_numeric_classes_sorted_numerically(tmp_path):
    rows = ["sentence1\tsentence2\tlabel", "a\tb\t10", "c\td\t2", "e\tf\t0", 'g "q\th\t2']
    train = write(tmp_path / "train.tsv", "\n".join(rows) + "\n")
    dev = write(tmp_path / "dev.tsv", "sentence1\tsentence2\tlabel\nx\ty\t10\n")
    data = load_user_data(train, dev, text_columns=None)
    assert data.text_columns == ("sentence1", "sentence2")
    assert data.label_names == ["0", "2", "10"]  # numeric order, not "0" < "10" < "2"
    assert data.train["label"] == [2, 1, 0, 1]
    assert data.train["sentence1"][3] == 'g "q'
    assert data.validation["label"] == [2]


def test_jsonl_pair_with_explicit_columns_and_label_column(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"q": "Is it?", "p": "It is.", "y": "yes", "id": 1},
        {"q": "Is not?", "p": "It is.", "y": "no", "id": 2},
    ])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"q": "x", "p": "y", "y": "no", "id": 3}])
    data = load_user_data(train, dev, text_columns="q, p", label_column="y")
    assert data.text_columns == ("q", "p")
    assert data.train.column_names == ["q", "p", "label"]
    assert data.label_names == ["no", "yes"]
    assert data.train["label"] == [1, 0]


def test_regression_inferred_from_floats(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": 3},
                                                    {"sentence": "c", "label": 4.25}])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"sentence": "d", "label": 1}, {"sentence": "e", "label": 2.5}])
    data = load_user_data(train, dev, text_columns=None)
    assert data.text_columns == ("sentence",)
    assert data.is_regression and data.label_names is None and data.num_labels == 1
    assert data.metric_kind == "pearson_spearman"
    assert data.train.features["label"].dtype == "float32"
    assert data.train["label"] == pytest.approx([0.5, 3.0, 4.25])
    assert data.validation["label"] == [1.0, 2.5]


def test_many_distinct_integers_inferred_as_regression(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\n" + "".join(f"t{i},{i}\n" for i in range(25)))
    dev = write(tmp_path / "dev.csv", "text,label\nx,3\ny,7\n")
    assert load_user_data(train, dev, None).is_regression


def test_task_type_override(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,1\nb,2\nc,1\n")
    dev = write(tmp_path / "dev.csv", "text,label\nd,2.0\ne,1\n")
    assert load_user_data(train, dev, None).label_names == ["1", "2"]  # inferred classification
    regression = load_user_data(train, dev, None, task_type="regression")
    assert regression.is_regression and regression.train["label"] == [1.0, 2.0, 1.0]
    floats = write(tmp_path / "floats.csv", "text,label\na,0.5\nb,1.5\n")
    forced = load_user_data(floats, floats, None, task_type="classification")
    assert forced.label_names == ["0.5", "1.5"] and forced.metric_kind == "accuracy_macro_f1"


def test_validation_label_2_0_matches_train_class_2(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,1\nb,2\n")
    dev = write(tmp_path / "dev.csv", "text,label\nd,2.0\n")
    assert load_user_data(train, dev, None).validation["label"] == [1]


def test_classes_that_differ_only_in_case_train_apart_and_the_run_says_so(tmp_path, capsys):
    train = write(tmp_path / "train.csv", "text,label\na,Pos\nb,pos\nc,neg\nd,NEG\ne,neg\n")
    data = load_user_data(train, train, None)
    assert data.label_names == ["NEG", "Pos", "neg", "pos"]
    err = capsys.readouterr().err
    assert "differ only in case ('NEG' and 'neg'; 'Pos' and 'pos')" in err and "write it one way" in err
    clean = write(tmp_path / "clean.csv", "text,label\na,pos\nb,neg\n")
    load_user_data(clean, clean, None)
    assert "differ only in case" not in capsys.readouterr().err


# ---- errors: each is one line naming the problem and the fix ----


def raises(match: str):
    return pytest.raises(UsageError, match=match)


def test_missing_file(tmp_path, csv_pair):
    with raises(r"--train-file .*nope\.csv does not exist; check the path"):
        load_user_data(tmp_path / "nope.csv", csv_pair[1], None)
    with raises(r"--validation-file .*nope\.csv does not exist"):
        load_user_data(csv_pair[0], tmp_path / "nope.csv", None)


def test_regression_validation_targets_all_equal(tmp_path):
    """Correlation with a constant is undefined: every evaluation would read 0 and the first model would be kept."""
    train = write(tmp_path / "train.csv", "text,label\na,0.5\nb,1.5\nc,2.25\n")
    dev = write(tmp_path / "dev.csv", "text,label\nd,2.5\ne,2.50\n")
    with raises(r"every validation target in dev\.csv is 2\.5; the regression metric .* needs varied targets"):
        load_user_data(train, dev, None)
    assert load_user_data(train, train, None).is_regression


def test_unsupported_extension(tmp_path, csv_pair):
    xlsx = write(tmp_path / "train.xlsx", "x")
    with raises(r"unsupported file type '\.xlsx'; use a \.csv, \.tsv, \.jsonl, \.json or \.parquet file, or a folder written by datasets' save_to_disk"):
        load_user_data(xlsx, csv_pair[1], None)


@pytest.mark.parametrize("name,text", [("e.csv", ""), ("h.csv", "text,label\n"), ("e.jsonl", "\n\n"), ("e.tsv", "text\tlabel\n\n")])
def test_empty_file(tmp_path, csv_pair, name, text):
    empty = write(tmp_path / name, text)
    with raises(rf"--train-file {name} has no examples \(empty file or header only\); add at least one row"):
        load_user_data(empty, csv_pair[1], None)


def test_text_column_missing_lists_columns(csv_pair):
    with raises(r"text column 'sentnce' not found in train\.csv; columns found: text, label\. Pass --text-columns"):
        load_user_data(*csv_pair, text_columns="sentnce")


def test_no_default_text_column_lists_columns(tmp_path):
    train = write(tmp_path / "train.csv", "body,label\na,x\n")
    with raises(r"no text column in train\.csv .*columns found: body, label\. Pass --text-columns"):
        load_user_data(train, train, None)


def test_label_column_missing_lists_columns(csv_pair):
    with raises(r"label column 'target' not found in train\.csv; columns found: text, label\. Pass --label-column"):
        load_user_data(*csv_pair, text_columns=None, label_column="target")


def test_validation_file_missing_column(tmp_path, csv_pair):
    dev = write(tmp_path / "dev2.csv", "sentence,label\na,pos\n")
    with raises(r"text column 'text' not found in dev2\.csv; columns found: sentence, label"):
        load_user_data(csv_pair[0], dev, None)


def test_headers_that_differ_only_in_case_or_spaces_are_the_columns_they_name(tmp_path, capsys):
    train = write(tmp_path / "train.csv", " Text ,LABEL\ngood,pos\nbad,neg\n")
    dev = write(tmp_path / "dev.csv", "text,label\nfine,pos\n")
    data = load_user_data(train, dev, None)
    assert data.text_columns == ("text",)
    assert data.train.to_dict() == {"text": ["good", "bad"], "label": [1, 0]}
    assert "train.csv's column 'LABEL' is read as 'label'" in capsys.readouterr().err
    pair = write(tmp_path / "pair.csv", "Sentence1,SENTENCE2,Score\na,b,1.5\nc,d,2.5\n")
    data = load_user_data(pair, pair, None, label_column=" score ")
    assert data.text_columns == ("sentence1", "sentence2") and data.is_regression
    assert data.train["sentence2"] == ["b", "d"]


def test_an_exact_header_wins_and_two_loose_twins_are_reported(tmp_path):
    train = write(tmp_path / "train.csv", "Text,text,label\nwrong,right,pos\nwrong,right,neg\n")
    assert load_user_data(train, train, None).train["text"] == ["right", "right"]
    twins = write(tmp_path / "twins.csv", "Text,TEXT,label\na,b,pos\nc,d,neg\n")
    with raises(r"text column 'text' not found in twins\.csv; columns found: Text, TEXT"):
        load_user_data(twins, twins, None)


def test_more_than_two_text_columns(csv_pair):
    with raises(r"--text-columns 'a,b,c' names 3 columns; give one or two comma-separated names"):
        load_user_data(*csv_pair, text_columns="a,b,c")


def test_regression_label_not_a_number_shows_value_and_line(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,1.5\nb,oops\n")
    with raises(r"regression label 'oops' at train\.csv line 3 is not a number; fix that row, or pass --task-type classification"):
        load_user_data(train, train, None, task_type="regression")


def test_regression_label_too_large_for_a_float32_loss(tmp_path):
    """(1e30 - prediction)^2 is inf in float32: the run would stop at step 1 saying the learning rate was too high."""
    train = write(tmp_path / "train.csv", "text,label\na,1.5\nb,2.5\nc,-1e30\n")
    with raises(r"regression label -1e30 at train\.csv line 4 is too large to train on: .* rescale the labels"):
        load_user_data(train, write(tmp_path / "dev.csv", "text,label\na,1.5\nb,2\n"), None)
    big = write(tmp_path / "dev_big.csv", "text,label\na,2e18\n")
    with raises(r"regression label 2e18 at dev_big\.csv line 2 is too large"):
        load_user_data(write(tmp_path / "ok.csv", "text,label\na,1.5\nb,2.5\n"), big, None)
    data = load_user_data(write(tmp_path / "fine.csv", "text,label\na,1.5\nb,123456789.5\n"), big.with_name("ok.csv"), None)
    assert data.train["label"][1] == pytest.approx(123456789.5)


def test_mixed_numbers_and_text_labels_without_task_type(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,1.5\nb,2.25\nc,n/a\n")
    with raises(r"labels mix numbers \(e\.g\. 1\.5\) and text \(e\.g\. 'n/a' at train\.csv line 4\); .*--task-type"):
        load_user_data(train, train, None)


def test_empty_label_cell(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,\nc,neg\n")
    with raises(r"empty label at train\.csv line 3 \(column 'label'\); fill it in or delete that row"):
        load_user_data(train, train, None)
    jsonl = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}])
    with raises(r"empty label at train\.jsonl line 2"):
        load_user_data(jsonl, jsonl, None)


def test_validation_label_not_in_train(tmp_path, csv_pair):
    dev = write(tmp_path / "dev.csv", "text,label\nmeh,neg\nhmm,maybe\n")
    with raises(r"validation label 'maybe' at dev\.csv line 3 never occurs in the training labels \(neg, pos\); fix or drop"):
        load_user_data(csv_pair[0], dev, None)


def test_single_class_train(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,pos\n")
    with raises(r"every training label in train\.csv is 'pos'; a classifier needs at least two classes"):
        load_user_data(train, train, None)


def test_bad_task_type_and_no_validation_file(csv_pair):
    with raises(r"--task-type 'regresion' is not supported; use classification, regression or multi-label"):
        load_user_data(*csv_pair, text_columns=None, task_type="regresion")
    with raises(r"no validation file given; pass --validation-file"):
        load_user_data(csv_pair[0], None, None)


def test_wrong_field_count_names_line_and_quoting(tmp_path, csv_pair):
    train = write(tmp_path / "train.csv", "text,label\ngood, really,pos\n")
    with raises(r"train\.csv line 2 has 3 fields but the header has 2; put double quotes around text that contains a comma"):
        load_user_data(train, csv_pair[1], None)


def test_file_split_by_another_separator(tmp_path, csv_pair):
    semicolons = write(tmp_path / "excel.csv", "text;label\ngood;pos\nbad;neg\n")
    with raises(r"excel\.csv's header 'text;label' is one column split by semicolons, but a \.csv file is read as comma-sep"):
        load_user_data(semicolons, csv_pair[1], None)
    tabs_named_csv = write(tmp_path / "tabs.csv", "text\tlabel\nmeh\tneg\n")
    with raises(r"tabs\.csv's header 'text\\tlabel' is one column split by tabs"):
        load_user_data(csv_pair[0], tabs_named_csv, None)
    commas_named_tsv = write(tmp_path / "train.tsv", "text,label\ngood,pos\n")
    with raises(r"train\.tsv's header 'text,label' is one column split by commas, but a \.tsv file is read as tab-sep"):
        load_user_data(commas_named_tsv, csv_pair[1], None)


def test_bad_json_line(tmp_path):
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: y}\n')
    with raises(r"train\.jsonl line 2 is not valid JSON .*one JSON object per line"):
        load_user_data(train, train, None)


def test_errors_are_one_line(tmp_path, csv_pair):
    with pytest.raises(UsageError) as info:
        load_user_data(*csv_pair, text_columns="nope")
    assert "\n" not in str(info.value)


def test_json_array_file(tmp_path):
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    train = write(tmp_path / "train.json", json.dumps(rows))
    data = load_user_data(train, train, None)
    assert data.label_names == ["0", "1"] and data.train["text"] == ["a", "b"]


def test_read_table_and_pick_text_columns_for_prediction_input(tmp_path):
    """`learners predict` reads unlabeled files with these two helpers."""
    from learners.harness.user_data import pick_text_columns, read_table

    path = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "a", "n": 1}, {"sentence": "b", "extra": True}])
    table = read_table(path, "--input")
    assert table.columns == ["sentence", "n", "extra"]
    assert table.rows == [{"sentence": "a", "n": "1", "extra": ""}, {"sentence": "b", "n": "", "extra": "true"}]
    assert pick_text_columns(None, table.columns, path.name) == ("sentence",)
    with raises(r"--input .*missing\.csv does not exist"):
        read_table(tmp_path / "missing.csv", "--input")


@pytest.mark.parametrize("value", ["NaN", "nan", "null"])
def test_missing_value_labels_are_not_a_class(tmp_path, value):
    train = write(tmp_path / "train.csv", f"text,label\na,pos\nb,{value}\nc,neg\n")
    with raises(rf"missing label '{value}' at train\.csv line 3 \(column 'label'\); fill it in or delete that row"):
        load_user_data(train, train, None)
    jsonl = write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": NaN}\n')
    with raises(r"missing label 'NaN' at train\.jsonl line 2"):
        load_user_data(jsonl, jsonl, None)


@pytest.mark.parametrize("task_type", [None, "classification"])
def test_numeric_and_text_classes_do_not_mix(tmp_path, task_type):
    train = write(tmp_path / "train.csv", "text,label\na,0\nb,1\nc,pos\nd,neg\n")
    with raises(r"labels in train\.csv mix numbers and text: '0' at train\.csv line 2 and 'pos' at train\.csv line 4; "
                r"use one kind of label"):
        load_user_data(train, train, None, task_type=task_type)


def test_text_column_cannot_be_the_label_column(csv_pair):
    with raises(r"column 'label' is both a text column and the label column"):
        load_user_data(*csv_pair, text_columns="text,label")
    with raises(r"--text-columns names 'text' twice"):
        load_user_data(*csv_pair, text_columns="text,text")


def test_a_tsv_whose_quotes_are_text_keeps_every_row_and_quote(tmp_path, capsys):
    """Cells joined by tabs (GLUE's files, `"\\t".join`): a quote that opens a cell is text. Read as CSV-style
    quoting, the first row lost its quotes and the next two merged into one example (tab and label inside)."""
    train = write(tmp_path / "train.tsv", 'text\tlabel\n"I love it," she said.\tpos\n"Great movie\tpos\n'
                                          'Bad one"\tneg\nplain\tneg\n')
    dev = write(tmp_path / "dev.tsv", 'text\tlabel\n"Hi" there\tpos\nok\tneg\n')
    data = load_user_data(train, dev, text_columns=None)
    assert data.train.to_dict() == {"text": ['"I love it," she said.', '"Great movie', 'Bad one"', "plain"],
                                    "label": [1, 1, 0, 0]}
    assert data.validation["text"] == ['"Hi" there', "ok"]
    err = capsys.readouterr().err
    assert "train.tsv: double quotes read as part of the text (cells joined by tabs, as in GLUE's files)" in err
    assert "dev.tsv: double quotes read as part of the text" in err
    # the merge alone (no quote that breaks quoting): a quoted cell would hold the tab and the next label
    write(train, 'text\tlabel\n"Great movie\tpos\nBad one"\tneg\nplain\tneg\n')
    assert load_user_data(train, dev, text_columns=None).train["text"] == ['"Great movie', 'Bad one"', "plain"]
    assert "a cell ending on line 3 would hold a tab" in capsys.readouterr().err


def test_a_quoted_tsv_as_pandas_writes_it_is_read_as_quoted(tmp_path, capsys):
    """pandas, Excel and the csv module quote a cell that holds a quote, tab or line break, doubling its quotes."""
    import pandas as pd

    texts = ['"Hi," she said.', "tab\there", "two\nlines", "plain"]
    pd.DataFrame({"text": texts, "label": ["pos", "neg", "pos", "neg"]}).to_csv(tmp_path / "train.tsv", sep="\t",
                                                                                 index=False)
    dev = write(tmp_path / "dev.tsv", "text\tlabel\nok\tneg\nfine\tpos\n")
    assert load_user_data(tmp_path / "train.tsv", dev, text_columns=None).train["text"] == texts
    assert capsys.readouterr().err == ""


def test_a_csv_with_a_broken_quote_names_the_line_and_the_rule(tmp_path, csv_pair):
    train = write(tmp_path / "bad.csv", 'text,label\nfine,pos\n"I love it," she said.,pos\n')
    with raises(r'bad\.csv line 3 cannot be parsed \(\',\' expected after \'"\'\): a double quote at the start of a '
                r'cell opens a quoted cell, which must close with a double quote right before the comma or the '
                r'line\'s end; inside a quoted cell write a double quote as two \(""\)\.'):
        load_user_data(train, csv_pair[1], text_columns=None)


# ---- data in every form (issue 31): headerless files, JSON layouts, Parquet, datasets folders, --dataset ----

SENTEVAL = "1\ta fine and moving film about love\n0\ta dull , lifeless mess of a movie\n1\tgreat fun\n0\tbad\n"


def test_a_headerless_senteval_file_reads_with_no_header_and_columns(tmp_path):
    train = write(tmp_path / "train.tsv", SENTEVAL)
    data = load_user_data(train, train, None, no_header=True, columns="label,text")
    assert data.text_columns == ("text",) and data.label_names == ["0", "1"]
    assert data.train.to_dict() == {"text": ["a fine and moving film about love", "a dull , lifeless mess of a movie",
                                             "great fun", "bad"], "label": [1, 0, 1, 0]}
    with raises(r"bad\.tsv line 2 has 3 fields but --columns names 2 \(label,text\)"):
        load_user_data(write(tmp_path / "bad.tsv", "1\tok\n0\tnot\tok\n"), train, None, no_header=True, columns="label,text")


def test_a_headerless_file_read_with_a_header_suggests_no_header_not_text_columns(tmp_path):
    """Its first sentence became a column name; the error suggested --text-columns question,passage."""
    train = write(tmp_path / "train.tsv", SENTEVAL)
    with pytest.raises(UsageError) as info:
        load_user_data(train, train, None)
    message = str(info.value)
    assert message == ("no text column in train.tsv (looked for text, sentence, or sentence1+sentence2); columns "
                       "found: 1, a fine and moving film about love. train.tsv's first row looks like data, not column "
                       "names: if the file has no header row, pass --columns label,text (a name for each "
                       "column, in order).")
    pair = write(tmp_path / "pair.csv", "0,A man is playing a guitar.,A man plays the guitar loudly.\n1,x,y\n")
    with raises(r"pass --columns label,sentence1,sentence2 "):
        load_user_data(pair, pair, None)
    with raises(r"label column 'label' not found in train\.tsv; .*pass --columns label,text"):
        load_user_data(train, train, "a fine and moving film about love")
    one_line = write(tmp_path / "one.tsv", "0\tA man is playing a guitar.\n")
    with raises(r"one\.tsv has no examples \(empty file or header only\); one\.tsv's first row looks like data.*--columns label,text"):
        load_user_data(one_line, one_line, None)
    plain = write(tmp_path / "plain.csv", "body,label\na,x\n")  # real names: the --text-columns advice stays
    with raises(r"columns found: body, label\. Pass --text-columns with one or two names from that list, e\.g\."):
        load_user_data(plain, plain, None)


@pytest.mark.parametrize("no_header,columns,message", [
    (True, None, r"--no-header needs --columns, a name for each column of the file in order, e\.g\. --columns label,text"),
    (True, "label,label", r"--columns names 'label' twice"),
    (True, "label,,text", r"--columns 'label,,text' has an empty name"),
])
def test_no_header_and_columns_go_together(tmp_path, no_header, columns, message):
    train = write(tmp_path / "train.tsv", SENTEVAL)
    with raises(message):
        load_user_data(train, train, None, no_header=no_header, columns=columns)


def test_columns_alone_mean_no_header_and_a_header_row_is_not_read_as_data(tmp_path):
    """One flag: --columns (--no-header optional). A first row holding the names is a header: as data it would be
    one more example, labelled 'label'."""
    train = write(tmp_path / "train.tsv", SENTEVAL)
    assert load_user_data(train, train, None, columns="label,text").train["label"] == [1, 0, 1, 0]
    header = write(tmp_path / "header.tsv", "Text\tlabel\n" + SENTEVAL)
    with raises(r"header\.tsv line 1 is a header row \(Text\tlabel\), but --columns says the file has none; drop "
                r"--columns \(and --no-header\) to read it by its header"):
        load_user_data(header, train, None, columns="label,text")


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    """The last column of the name silently won before."""
    train = write(tmp_path / "train.csv", "text,label,text\na,x,b\nc,y,d\n")
    with raises(r"train\.csv's header names the column 'text' twice \(columns 1 and 3\); rename one of them"):
        load_user_data(train, train, None)


def test_a_field_longer_than_the_csv_module_limit_is_read(tmp_path):
    """Python's csv refuses fields over 128 KB by default; the error blamed quoting."""
    long_text = "word " * 60_000  # 300 KB
    train = write(tmp_path / "train.csv", f'text,label\n"{long_text}",pos\nshort,neg\n')
    assert load_user_data(train, train, None).train["text"][0] == long_text
    tsv = write(tmp_path / "train.tsv", f"text\tlabel\n{long_text}\tpos\nshort\tneg\n")
    assert load_user_data(tsv, tsv, None).train["text"][0] == long_text


@pytest.mark.parametrize("layout", [
    [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}],
    {"version": 2, "data": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]},
    {"rows": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]},
    {"columns": ["text", "label"], "index": [0, 1], "data": [["a", "x"], ["b", "y"]]},  # pandas orient="split"
    {"text": ["a", "b"], "label": ["x", "y"]},  # columns
])
def test_json_layouts(tmp_path, layout):
    train = write(tmp_path / "train.json", json.dumps(layout, indent=1))
    data = load_user_data(train, train, None)
    assert data.train.to_dict() == {"text": ["a", "b"], "label": [0, 1]} and data.label_names == ["x", "y"]


def test_a_json_file_numbers_its_records_as_rows(tmp_path):
    train = write(tmp_path / "train.json", json.dumps({"data": [{"text": "a", "label": "x"}, {"text": "b", "label": ""}]},
                                                      indent=2))
    with raises(r"empty label at train\.json row 2 \(column 'label'\)"):
        load_user_data(train, train, None)
    splits = write(tmp_path / "splits.json", json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}))
    with raises(r"splits\.json holds several lists of records \(train, test\); put each in a file of its own"):
        load_user_data(splits, splits, None)
    scalar = write(tmp_path / "n.json", "3")
    with raises(r"n\.json holds a JSON int, not records; write a list of objects"):
        load_user_data(scalar, scalar, None)


def test_parquet_files(tmp_path):
    import pandas as pd

    pd.DataFrame({"sentence": ["a", "b", "c"], "label": [0.5, 2.0, 3.5]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"sentence": ["d", "e"], "label": [1.0, 2.5]}).to_parquet(tmp_path / "dev.parquet")
    data = load_user_data(tmp_path / "train.parquet", tmp_path / "dev.parquet", None)
    assert data.is_regression and data.train["label"] == pytest.approx([0.5, 2.0, 3.5])
    assert data.validation["sentence"] == ["d", "e"]
    pd.DataFrame({"sentence": ["a", "b"], "label": ["x", None]}).to_parquet(tmp_path / "holes.parquet")
    with raises(r"empty label at holes\.parquet row 2 \(column 'label'\)"):
        load_user_data(tmp_path / "holes.parquet", tmp_path / "dev.parquet", None)
    class_label_dataset(["good", "bad"], [1, 0]).to_parquet(tmp_path / "classes.parquet")  # datasets keeps ClassLabel
    assert load_user_data(tmp_path / "classes.parquet", tmp_path / "classes.parquet", None).label_names == ["neg", "pos"]
    write(tmp_path / "broken.parquet", "not parquet")
    with raises(r"broken\.parquet cannot be read as Parquet \(.*\); write it again"):
        load_user_data(tmp_path / "broken.parquet", tmp_path / "dev.parquet", None)


def class_label_dataset(texts, labels):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def test_save_to_disk_folders(tmp_path, capsys):
    """A Dataset folder is one file's worth; a DatasetDict folder gives train and validation (a ClassLabel reads as
    its names)."""
    import datasets

    train = class_label_dataset(["good", "bad", "fine"], [1, 0, 1])
    train.save_to_disk(tmp_path / "train_set")
    datasets.DatasetDict(train=train, dev=class_label_dataset(["meh"], [0])).save_to_disk(tmp_path / "both")
    data = load_user_data(tmp_path / "train_set", tmp_path / "both", None)
    assert data.label_names == ["neg", "pos"] and data.train["label"] == [1, 0, 1]
    assert "note: both: split 'dev' is the validation data (--validation-split picks another)" in capsys.readouterr().err
    data = load_user_data(tmp_path / "both", None, None)
    assert data.train["text"] == ["good", "bad", "fine"] and data.validation["text"] == ["meh"]
    assert load_user_data(tmp_path / "both", None, None, validation_split="train").validation["text"] == ["good", "bad", "fine"]
    with raises(r"both has no split 'nope' \(its splits: train, dev\); pass --train-split with one of them"):
        load_user_data(tmp_path / "both", None, None, train_split="nope")
    with raises(r"empty label at holes\[train\] row 2"):
        datasets.DatasetDict(train=class_label_dataset(["a", "b"], [1, -1]), validation=train).save_to_disk(tmp_path / "holes")
        load_user_data(tmp_path / "holes", None, None)
    with raises(r"--train-file .*plain is a folder, but not one written by datasets' save_to_disk"):
        (tmp_path / "plain").mkdir()
        load_user_data(tmp_path / "plain", tmp_path / "both", None)
    with raises(r"--columns \(and --no-header\) are for CSV and TSV files without a header row; --train-file train_set"):
        load_user_data(tmp_path / "train_set", tmp_path / "both", None, no_header=True, columns="label,text")


def test_dataset_by_local_path(tmp_path, monkeypatch):
    """--dataset goes through datasets.load_dataset: a local folder of data files works offline."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "my_set"
    folder.mkdir()
    write(folder / "train.csv", "text,label\ngood,pos\nbad,neg\nfine,pos\n")
    write(folder / "test.csv", "text,label\nmeh,neg\n")
    data = load_user_data(None, None, None, dataset=str(folder))
    assert data.train["text"] == ["good", "bad", "fine"] and data.validation.to_dict() == {"text": ["meh"], "label": [0]}
    with raises(r"--dataset gives the train and validation data; drop --train-file"):
        load_user_data(folder / "train.csv", None, None, dataset=str(folder))
    with raises(r"--dataset .*missing does not exist; check the path"):
        load_user_data(None, None, None, dataset=str(tmp_path / "missing"))


def test_a_dataset_that_cannot_be_fetched_is_one_line(monkeypatch, tmp_path, tiny_model_dir, capsys):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError) as info:
        load_user_data(None, None, None, dataset="no-such-user/no-such-set", dataset_config="x")
    message = str(info.value)
    assert message.startswith("--dataset no-such-user/no-such-set/x cannot be loaded (offline: HF_HUB_OFFLINE is set): ")
    assert "check the name (and --dataset-config), and that the Hugging Face hub is reachable" in message
    assert "\n" not in message
    from learners.harness.cli import main

    code = main(["finetune", "--dataset", "no-such-user/no-such-set", "--output-dir", str(tmp_path / "out"),
                 "--model", str(tiny_model_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("learners: error: --dataset no-such-user/no-such-set cannot be loaded (offline: HF_HUB_OFFLINE is set)")
    assert not (tmp_path / "out").exists()


# ---- end to end: each form fine-tunes and predicts from the command line ----

def senteval_files(d: Path) -> tuple[list[str], list[str]]:
    rows = [f"{i % 2}\tword{i % 7} thing{i % 5} and a longer sentence here" for i in range(12)]
    write(d / "train.tsv", "\n".join(rows) + "\n")
    write(d / "test.tsv", "\n".join(rows[:5]) + "\n")
    flags = ["--columns", "label,text"]  # one flag
    return ["--train-file", str(d / "train.tsv"), "--validation-file", str(d / "train.tsv"), *flags,
            "--test-file", str(d / "test.tsv")], ["--input", str(d / "test.tsv"), *flags]


def parquet_files(d: Path) -> tuple[list[str], list[str]]:
    import pandas as pd

    frame = pd.DataFrame({"text": [f"word{i % 7} thing{i % 5}" for i in range(12)], "label": ["neg", "pos"] * 6})
    frame.to_parquet(d / "train.parquet")
    frame[:5].drop(columns="label").to_parquet(d / "test.parquet")
    return ["--train-file", str(d / "train.parquet"), "--validation-file", str(d / "train.parquet"),
            "--test-file", str(d / "test.parquet")], ["--input", str(d / "test.parquet")]


def saved_dataset_folder(d: Path) -> tuple[list[str], list[str]]:
    import datasets

    train = class_label_dataset([f"word{i % 7} thing{i % 5}" for i in range(12)], [0, 1] * 6)
    datasets.DatasetDict(train=train, validation=train, test=train.select(range(5))).save_to_disk(d / "saved")
    return ["--train-file", str(d / "saved"), "--test-file", str(d / "saved")], ["--input", str(d / "saved")]


@pytest.mark.parametrize("make", [senteval_files, parquet_files, saved_dataset_folder])
@pytest.mark.slow
def test_each_form_fine_tunes_and_predicts(tmp_path, tiny_model_dir, make, capsys):
    """A headerless SentEval file, a Parquet file and a save_to_disk folder: finetune, with --test-file predicted into
    the run, then `learners predict` with the same one flag or none, giving the same predictions."""
    import csv

    from learners.harness.cli import main

    finetune_flags, predict_flags = make(tmp_path)
    out = tmp_path / "run"
    assert main(["finetune", *finetune_flags, "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "custom" and results["train_examples"] == 12
    assert results["test_examples"] == 5 and results["test_predictions"] == str(out / "test_predictions.csv")
    assert f"wrote 5 test predictions to {out / 'test_predictions.csv'}" in capsys.readouterr().out
    with open(out / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    label_names = json.loads((out / "model" / "learners_task.json").read_text())["label_names"]
    assert len(rows) == 5 and len(label_names) == 2 and {row["prediction"] for row in rows} <= set(label_names)
    assert main(["predict", "--model", str(out), *predict_flags, "--output", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").read_text() == (out / "test_predictions.csv").read_text()
