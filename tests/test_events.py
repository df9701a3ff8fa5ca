"""Training reports events, as data: the CLI speaks them, and anything else can use them as they are."""
import dataclasses
import json

from conftest import TINY_OVERRIDES

from repytilian.api import TrainOptions, train
from repytilian.data import DataSource
from repytilian.events import (
    CheckpointSaved,
    Evaluated,
    Finished,
    NothingSaved,
    Prepared,
    Saved,
    Started,
    Stopped,
)
from repytilian.trainer import StopRequest


def test_a_finished_run_reports_in_order_and_prints_nothing(corpus_file, tmp_path, capsys):
    events = []
    train(TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", progress=False,
                       overrides={**TINY_OVERRIDES, "checkpoint_every": 20}, out=str(tmp_path / "m")),
          on_event=events.append)
    kinds = [type(e) for e in events]
    assert kinds.index(Prepared) < kinds.index(Started) < kinds.index(Evaluated) < kinds.index(Finished)
    assert kinds[-1] is Saved and events[-1].path == tmp_path / "m"
    assert [e.step for e in events if isinstance(e, Evaluated)] == [10, 20, 30, 40, 50]
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [20, 40]
    assert capsys.readouterr().err == ""  # the library said nothing itself
    json.dumps([dataclasses.asdict(e) for e in events], default=str)  # as a server would send them


def test_a_stopped_run_says_where_everything_is_and_the_cli_adds_how_to_resume(corpus_file, tmp_path):

    events = []
    opts = TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", progress=False,
                        overrides=dict(TINY_OVERRIDES), out=None, interrupt_root=str(tmp_path / "models"),
                        stop=StopRequest(at_step=7))
    result = train(opts, on_event=events.append)
    (stopped,) = [e for e in events if isinstance(e, Stopped)]
    assert stopped.step == 7 and stopped.path == result.saved_to and stopped.out is None
    assert "resume" not in stopped.words()  # command lines are the CLI's words
    nothing = train(TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", progress=False,
                                 overrides=dict(TINY_OVERRIDES), out=None), on_event=events.append)
    assert nothing.saved_to is None and isinstance(events[-1], NothingSaved)


def test_the_cli_speaks_the_events(capsys, tmp_path):
    from repytilian.cli.train import speak

    speak(Stopped("SIGINT", 12, tmp_path / "i", None))
    speak(Saved(tmp_path / "m"))
    speak(NothingSaved())
    err = capsys.readouterr().err
    assert f"stopped by SIGINT at step 12; saved everything to {tmp_path / 'i'}" in err
    assert f'resume with: python3 training.py -l {tmp_path / "i"} -m ""' in err
    assert f"saved the model to {tmp_path / 'm'}; generate with: python3 generate.py -m {tmp_path / 'm'}" in err
    assert 'nothing saved (-m "")' in err


def test_notes_of_the_code_training_calls_go_to_its_listener_too(tmp_path, capsys, caplog):
    """Reading data is outside the Trainer: its notes (here, a skipped binary file) reach
    on_event as Note events, not stderr, so a server or a second rank can drop or forward them."""
    from conftest import make_corpus

    from repytilian.events import Note, note, notes_to

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "play.txt").write_text(make_corpus())
    (folder / "picture.bin").write_bytes(bytes(range(256)) * 4)
    events = []
    train(TrainOptions(data=DataSource("dir", str(folder)), iterations="quick", progress=False,
                       overrides=dict(TINY_OVERRIDES), out=None), on_event=events.append)
    assert any(isinstance(e, Note) and "skipped 1" in e.text for e in events)
    assert capsys.readouterr().err == ""
    heard = []
    with notes_to(heard.append):
        note("inside")
    note("outside")
    assert [e.text for e in heard] == ["inside"] and capsys.readouterr().err == ""  # the library prints nothing...
    assert [r.getMessage() for r in caplog.records] == ["outside"]  # ...a note nobody listens for is logged


def test_a_tiny_models_parameters_are_counted_not_rounded_to_nothing():
    from repytilian.events import Prepared

    words = Prepared("a file", 100, "characters", 10, 90, 10, 1, 2, 16, 8, 3_472, 16, 2e-3, "cpu", "float32",
                     False).words()
    assert "3,472 parameters" in words and "0.00M" not in words
    assert "0.80M parameters" in Prepared("a file", 100, "characters", 10, 90, 10, 1, 2, 16, 8, 800_000, 16, 2e-3,
                                          "cpu", "float32", False).words()


def test_one_layer_and_one_head_are_not_plural():
    """`-s auto` on a small text printed "1 layers x 2 heads", and the model line "model: 1 layers"."""
    from repytilian.config import auto_settings
    from repytilian.events import Prepared

    prepared = Prepared("file a.txt", 100, "characters", 16, 90, 10, 1, 1, 32, 32, 5_000, 16, 3e-3, "cpu",
                        "float32", False)
    assert "model: 1 layer, 1 head, 32 wide" in prepared.words()
    _, why = auto_settings(1_260, 16, False)
    assert "so 1 layer x 2 heads x 32 wide" in why
