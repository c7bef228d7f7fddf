"""`finetune --test-file`: the finished run's model predicts the test data into OUT/test_predictions.csv (.conll or
.jsonl for token classification), as
`learners predict --model OUT --input TEST` would (the same reading and writing: predict.py).

The CLI hands `write_test_predictions` to run_finetune as its `after_save`, so the file is written into the
run's folder with the model, before results.json: it is part of the finished run, replaced with it by
--overwrite. (finetune.py cannot import predict.py, which imports it.)"""

from __future__ import annotations

from pathlib import Path

from .finetune import FinetuneArgs
from .predict import run_predict
from .runs import TEST_PREDICTIONS, TOKEN_TEST_PREDICTIONS
from .tables import headerless_columns
from .token_data import TASK_TYPE as TOKEN_TASK_TYPE
from .token_files import is_conll


def write_test_predictions(args: FinetuneArgs, folder: Path) -> dict:
    """Predict args.test_file with the model saved in `folder`/model; the facts for results.json. A token
    classification run writes tags per word, CoNLL or JSON lines as its test file is (token_predict.py)."""
    name = TEST_PREDICTIONS
    if args.task_type == TOKEN_TASK_TYPE:
        name = TOKEN_TEST_PREDICTIONS[0 if is_conll(Path(args.test_file)) else 1]
    out = Path(folder) / name
    count = run_predict(str(Path(folder) / "model"), args.test_file, str(out), args.text_columns,
                        max_length=args.max_length, input_columns=headerless_columns(args.no_header, args.columns),
                        split=args.test_split)
    return {"test_predictions": str(out), "test_examples": count}
