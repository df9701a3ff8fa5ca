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


def test_a_budgets_pace_is_remembered_per_machine_and_shape_so_a_seed_decides_alike(isolated_home):
    from repytilian.runs.long_run import PACE_FILE

    busy = DropoutCheck(0.15, 4096, 1_003_855, None, 900.0, key="this machine: quarter's shape")
    busy.after_step(1, 1.6), busy.after_step(2, 1.8)
    assert busy.after_step(3, 2.8) is None  # 0.2 and 1.0 s: a busy machine, nothing remembered
    assert not (isolated_home / PACE_FILE).exists()
    slow = DropoutCheck(0.15, 4096, 1_003_855, None, 900.0, key="this machine: quarter's shape")
    slow.after_step(1, 1.6), slow.after_step(2, 2.2)
    assert slow.after_step(3, 2.8) is None and slow.remembered is None  # 0.6 s a step: 6 times
    kept = json.loads((isolated_home / PACE_FILE).read_text())["this machine: quarter's shape"]
    assert kept["seconds_a_step"] == pytest.approx(0.6)
    # The same command again, its first steps faster this time (was: projected anew, 18 times, and
    # trained another model than the first run with the same seed)
    again = DropoutCheck(0.15, 4096, 1_003_855, None, 900.0, key="this machine: quarter's shape")
    again.after_step(1, 1.2)
    assert again.after_step(3, 1.6) is None and again.epochs == pytest.approx(slow.epochs)
    assert again.remembered == kept["date"]
    other = DropoutCheck(0.15, 4096, 1_003_855, None, 900.0, key="this machine: another shape")
    other.after_step(1, 1.2)
    assert other.after_step(3, 1.6) == 0.15 and other.remembered is None  # its own pace
    fixed = DropoutCheck(0.15, 4096, 1_003_855, 5000, None, key="this machine: fixed steps")
    fixed.after_step(1, 10.0), fixed.after_step(2, 20.0)
    assert fixed.after_step(3, 30.0) == 0.15  # no budget: nothing to time, nothing remembered
    assert "this machine: fixed steps" not in json.loads((isolated_home / PACE_FILE).read_text())


def test_a_timed_run_says_when_it_projects_from_a_remembered_pace(corpus_file, tmp_path, monkeypatch):
    from repytilian.runs import long_run

    monkeypatch.setattr(long_run, "NOISY_SPREAD", float("inf"))  # a busy test machine's steps remembered too

    def timed() -> str:
        said = []
        train(TrainOptions(data=DataSource("file", str(corpus_file)), settings="quarter", progress=False,
                           overrides={**TINY_OVERRIDES, "max_seconds": 2.0, "dtype": "float32"}, out=None),
              log=said.append)
        (line,) = [s for s in said if "projected to see its training text" in s]
        return line

    first, second = timed(), timed()
    assert "remembered" not in first and "(at this machine's pace for this model, remembered on " in second
    times = lambda line: line.split("about ")[1].split(" times")[0]  # noqa: E731
    assert times(first) == times(second)


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
                                out=None, stop=StopRequest(at_step=5), interrupt_root=str(tmp_path / "models")),
                   log=said.append)
    assert "projected" not in "\n".join(said) and result.language_model.model.config.dropout == 0.3
    assert tmp_path in result.saved_to.parents  # the stopped run's save, not in the checkout's models/


def test_a_run_compiled_from_its_start_compiles_once_with_the_dropout_it_chose(corpus_file, tmp_path):
    """CUDA compiles from the first step, as `compile` true does on a CPU: the dropout decided after
    step 3 changed the compiled model, which compiled it a second time (was: two graphs; on an H200
    the second compile made the first-steps estimate say 5.9 s a step for 35 ms steps). Those first
    steps now run eagerly and the model is compiled once, with the dropout chosen."""
    import torch._dynamo

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    said = []
    result = train(TrainOptions(data=DataSource("file", str(corpus_file)), settings="quarter", progress=False,
                                overrides={**TINY_OVERRIDES, "max_iters": 600, "max_seconds": None, "compile": True},
                                out=None, stop=StopRequest(at_step=8), interrupt_root=str(tmp_path / "models")),
                   log=said.append)
    assert "so it regularises more: dropout 0.15" in "\n".join(said)
    assert result.language_model.model.config.attention_p == 0.15
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["ok"] == 1
