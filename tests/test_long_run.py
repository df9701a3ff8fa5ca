"""`long_run_dropout` (runs/long_run.py): more dropout for a run that will see its text many times."""
import json

import pytest
from conftest import TINY_OVERRIDES

from repytilian.api import TrainOptions, train
from repytilian.config import TrainConfig
from repytilian.data import DataSource
from repytilian.runs.long_run import LONG_RUN_EPOCHS, DropoutCheck
from repytilian.runtime.signals import StopRequest


def test_it_is_decided_once_at_the_check_step_from_the_projected_length():
    # quarter's shape on Tiny Shakespeare: 4,096 tokens a step, 1,003,855 training tokens
    fast = DropoutCheck(0.15, 4096, 1_003_855, None, 900.0)
    assert fast.after_step(1, 1.2) is None  # the first step warms up: 1 s more than the others
    assert fast.after_step(2, 1.4) is None and fast.epochs is None  # not yet
    assert fast.after_step(3, 1.6) == 0.15 and fast.epochs == pytest.approx(18.4, abs=0.1)  # 0.2 s a step
    assert fast.after_step(3, 1.6) is None and fast.after_step(4, 1.8) is None  # once
    slow = DropoutCheck(0.15, 4096, 1_003_855, None, 900.0)
    assert slow.after_step(1, 1.6) is None  # (was: the first step's warm-up counted as the pace, 7 times for 15)
    assert slow.after_step(3, 2.8) is None and slow.epochs < LONG_RUN_EPOCHS  # 0.6 s a step: 6 times
    steps = DropoutCheck(0.15, 4096, 1_003_855, 5000, None)  # a run of fixed steps needs no timing
    assert steps.after_step(3, 30.0) == 0.15 and steps.epochs == pytest.approx(20.4, abs=0.1)


def test_a_value_out_of_range_is_refused():
    with pytest.raises(ValueError, match="long_run_dropout must be in"):
        TrainConfig(long_run_dropout=1.0).validate()


def run(corpus_file, tmp_path, max_iters, stop_at=None, load=None):
    said = []
    # the quarter preset's dropout (0.1, attention weights kept whole) and long_run_dropout (0.15)
    over = {} if load else {**TINY_OVERRIDES, "max_iters": max_iters, "max_seconds": None}
    result = train(TrainOptions(data=DataSource("file", str(corpus_file)), settings="auto" if load else "quarter",
                                progress=False, overrides=over, out=str(tmp_path / "m"), load=load,
                                interrupt_root=str(tmp_path / "models"),
                                stop=StopRequest(at_step=stop_at) if stop_at else None), log=said.append)
    return result, "\n".join(said)


def test_a_run_that_sees_its_text_ten_times_drops_out_more_from_step_four_and_saves_it(corpus_file, tmp_path):
    # ~14,000 training tokens, 256 a step: 600 steps see them about 11 times
    result, said = run(corpus_file, tmp_path, 600, stop_at=6)
    assert "projected to see its training text about 11 times, so it regularises more: dropout 0.15" in said
    assert "from step 4 (`long_run_dropout`)" in said
    model = result.language_model.model
    assert model.config.dropout == 0.15 and model.config.attention_p == 0.15
    assert all(block.attn.dropout == 0.15 and block.mlp.dropout.p == 0.15 for block in model.transformer.h)
    saved = json.loads((result.saved_to / "config.json").read_text())["model"]
    assert saved["dropout"] == 0.15 and saved["attention_dropout"] is None  # resumed, it goes on with it
    resumed, said = run(corpus_file, tmp_path, None, load=str(result.saved_to))
    assert "projected" not in said and resumed.language_model.model.config.attention_p == 0.15


def test_a_shorter_run_keeps_the_models_dropout_and_says_so(corpus_file, tmp_path):
    result, said = run(corpus_file, tmp_path, 20)
    assert "about 0 times: the model's dropout throughout (`long_run_dropout` takes over from 10 times)" in said
    config = result.language_model.model.config
    assert config.dropout == 0.1 and config.attention_p == 0.0


def test_a_dropout_asked_for_is_kept_however_long_the_run(corpus_file, tmp_path):
    said = []
    result = train(TrainOptions(data=DataSource("file", str(corpus_file)), settings="quarter", progress=False,
                                overrides={**TINY_OVERRIDES, "max_iters": 600, "max_seconds": None, "dropout": 0.3},
                                out=None, stop=StopRequest(at_step=5)), log=said.append)
    assert "projected" not in "\n".join(said) and result.language_model.model.config.dropout == 0.3
