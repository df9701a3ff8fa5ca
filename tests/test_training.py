"""Training through the library API: the loss falls, and resuming is exact."""
import dataclasses
import json

import pytest
import torch
from conftest import TINY_OVERRIDES

from repytilian.api import TrainOptions, train
from repytilian.config import TrainConfig
from repytilian.data import DataSource
from repytilian.errors import RepytilianError, SettingError
from repytilian.store.folder import load_model_dir
from repytilian.trainer import StopRequest, TrainState, learning_rate


def options(corpus_file, tmp_path, **kw) -> TrainOptions:
    base = dict(data=DataSource("file", str(corpus_file)), overrides=dict(TINY_OVERRIDES), iterations="quick",
                out=str(tmp_path / "model"), progress=False, interrupt_root=str(tmp_path / "models"), seed=7)
    return TrainOptions(**{**base, **kw})


def test_training_lowers_the_loss_and_writes_a_complete_model_dir(corpus_file, tmp_path):
    result = train(options(corpus_file, tmp_path, overrides={**TINY_OVERRIDES, "max_iters": 60}))
    model_dir = tmp_path / "model"
    metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20, 30, 40, 50, 60]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    assert result.val_loss is not None and result.val_loss < 2.5
    config = json.loads((model_dir / "config.json").read_text())
    assert config["tokenizer"] == "characters" and config["summary"]["step"] == 60
    assert {p.name for p in (model_dir / "trainer_state").iterdir()} == {"state.json", "tensors.safetensors"}


@pytest.mark.parametrize("extra", [{}, {"optimizer": "muon", "position": "rope", "norm": "rmsnorm",
                                        "activation": "swiglu", "bias": False}])
def test_resume_is_bit_identical_to_training_in_one_go(corpus_file, tmp_path, extra):
    # dropout: the RNG state must resume too; float32 named: on a CPU with native bf16 `dtype` auto is
    # measured by each run, and a busy machine's measurement (not remembered) may differ between them
    over = {**TINY_OVERRIDES, "max_iters": 40, "dropout": 0.1, "dtype": "float32", **extra}
    straight = train(options(corpus_file, tmp_path / "a", overrides=over))

    first = train(options(corpus_file, tmp_path / "b", overrides=over, stop=StopRequest(at_step=20)))
    assert first.stopped_by and first.state.step == 20
    paused = first.saved_to
    assert paused.parent == tmp_path / "b" / "models" / "interrupted"
    assert not (tmp_path / "b" / "model").exists()  # an interrupted run never writes the -m target
    resumed = train(options(corpus_file, tmp_path / "b", load=str(paused), iterations=None, overrides={}))
    assert resumed.state.step == 40

    a = straight.language_model.model.state_dict()
    b = resumed.language_model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    without_time = lambda ms: [{k: v for k, v in m.items() if k != "time"} for m in ms]  # noqa: E731
    assert without_time(straight.state.metrics) == without_time(resumed.state.metrics)


def test_compiled_training_on_two_threads_repeats_and_resumes_bit_for_bit(corpus_file, tmp_path):
    """Was: Inductor's C++ code added the embedding's gradient rows with atomic adds from each thread,
    so two compiled runs of one seed differed from their first step on, and so did a resume (not on
    one thread: this test's worker has one, the runs here two)."""
    over = {**TINY_OVERRIDES, "max_iters": 30, "dropout": 0.1, "dtype": "float32", "compile": True}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = train(options(corpus_file, tmp_path / "a", overrides=over))
        two = train(options(corpus_file, tmp_path / "b", overrides=over))
        first = train(options(corpus_file, tmp_path / "c", overrides=over, stop=StopRequest(at_step=15)))
        resumed = train(options(corpus_file, tmp_path / "c", load=str(first.saved_to), iterations=None, overrides={}))
    finally:
        torch.set_num_threads(threads)
    assert resumed.state.step == 30
    a, b, c = (r.language_model.model.state_dict() for r in (one, two, resumed))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [k for k in a if not torch.equal(a[k], c[k])] == []


def test_resuming_a_finished_model_trains_more_with_a_new_schedule(corpus_file, tmp_path):
    train(options(corpus_file, tmp_path))
    more = train(options(corpus_file, tmp_path, load=str(tmp_path / "model"), iterations="quick", overrides={}))
    assert more.state.step == 100 and more.state.schedule_start == 50
    assert load_model_dir(tmp_path / "model", with_trainer=True).trainer["state"]["step"] == 100


def test_a_preset_given_with_load_is_said_not_to_apply(corpus_file, tmp_path):
    """`-l MODEL -s hyper` trained MODEL on as it was, without a word about the preset it left out."""
    from repytilian.events import Note

    train(options(corpus_file, tmp_path))
    notes = []
    train(options(corpus_file, tmp_path, load=str(tmp_path / "model"), settings="hyper", overrides={}),
          on_event=lambda e: notes.append(e) if isinstance(e, Note) else None)
    said = [n for n in notes if "warning: `settings` hyper does not apply here" in n.text]
    assert len(said) == 1 and said[0].kind == "warning" and said[0].settings == ("settings",)


def test_learning_rate_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    state = TrainState(max_iters=110)
    lrs = [learning_rate(s, cfg, state) for s in range(110)]
    assert lrs[0] < lrs[5] < lrs[9] < 1.0
    assert abs(lrs[10] - 1.0) < 1e-9 and abs(learning_rate(110, cfg, state) - 0.1) < 1e-9
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    endless = TrainState(max_iters=None)
    assert learning_rate(10_000, cfg, endless) == 1.0


def test_a_run_shorter_than_its_warm_up_warms_up_for_a_tenth_of_it(corpus_file, tmp_path):
    said = []
    shape = {k: v for k, v in TINY_OVERRIDES.items() if k != "warmup_iters"}  # the preset's 100 steps of warm-up
    train(TrainOptions(data=DataSource("file", str(corpus_file)), out=str(tmp_path / "m"), progress=False,
                       overrides={**shape, "max_iters": 30}), on_event=said.append)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["train"]
    assert saved["warmup_iters"] == 3  # was 100: its 30 steps learned at under a third of the peak rate
    assert any("warm-up of 3 steps, a tenth of the run's 30" in getattr(e, "text", "") for e in said)
    lrs = [m["lr"] for m in map(json.loads, (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()) if "lr" in m]
    assert max(lrs) > 0.5 * saved["learning_rate"]


def test_a_resumed_run_extended_by_fewer_steps_than_its_warm_up_warms_up_for_a_tenth_of_them(corpus_file, tmp_path):
    train(options(corpus_file, tmp_path))  # a finished run, warm-up 5 (TINY)
    said = []
    more = train(options(corpus_file, tmp_path, load=str(tmp_path / "model"), overrides={"max_iters": 4}),
                 on_event=said.append)
    assert more.state.step == 54 and more.state.schedule_start == 50
    assert json.loads((tmp_path / "model" / "config.json").read_text())["train"]["warmup_iters"] == 1  # was 5
    assert any("warm-up of 1 step, a tenth of the run's 4" in getattr(e, "text", "") for e in said)


def test_a_text_without_line_breaks_trains_saves_and_starts_generation_at_a_space(tmp_path):
    from repytilian import load_model

    spaced = tmp_path / "spaced.txt"
    spaced.write_text("to be or not to be that is the question " * 200, encoding="utf-8")
    train(options(spaced, tmp_path, out=str(tmp_path / "spaced")))
    assert len(load_model(tmp_path / "spaced").generate("", 20, seed=1)) == 20
    # No line break and no space: the model is still saved (the card has no sample), and an
    # empty prompt is a clear error that asks for one.
    solid = tmp_path / "solid.txt"
    solid.write_text("abcdefgh" * 800, encoding="utf-8")
    logs = []
    train(options(solid, tmp_path, out=str(tmp_path / "solid")), log=logs.append)
    assert any("no sample for the model card" in line for line in logs)
    lm = load_model(tmp_path / "solid")
    with pytest.raises(RepytilianError, match="no line break or space to start from; give a `prompt`"):
        lm.generate("", 10)
    assert lm.generate("ab", 10, seed=1)


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is not a dependency)."""
    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, step, value))

    def add_text(self, tag, text):
        pass

    def flush(self):
        pass

    def close(self):
        self.closed = True


class FakeWandbRun:
    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_trackers_get_every_evaluation_and_the_final_loss(corpus_file, tmp_path, monkeypatch):
    import sys
    import types

    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    run = FakeWandbRun()
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kwargs: run if kwargs["config"]["n_layer"] == 1 else None
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    result = train(options(corpus_file, tmp_path, wandb=True, tensorboard=str(tmp_path / "tb"),
                           overrides={**TINY_OVERRIDES, "max_iters": 20}))
    writer = FakeWriter.made[-1]
    assert writer.log_dir == str(tmp_path / "tb") and writer.closed
    assert [step for tag, step, _ in writer.scalars if tag == "loss/val"] == [10, 20]
    final = [(step, value) for tag, step, value in writer.scalars if tag == "loss/val_whole_split"]
    assert final == [(20, pytest.approx(result.val_loss, abs=1e-4))]
    assert [step for step, _ in run.logged] == [10, 20] and set(run.logged[0][1]) >= {"train_loss", "val_loss", "lr"}
    assert run.finished and run.summary["step"] == 20


def test_a_tracker_that_is_not_installed_is_a_clear_error_before_training(corpus_file, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    events = []
    with pytest.raises(RepytilianError, match="^wandb needs the wandb package: pip install wandb"):
        train(options(corpus_file, tmp_path, wandb=True), on_event=events.append)
    assert not (tmp_path / "model").exists()
    assert events == []  # before the data is read (a large corpus is minutes of tokenizing): was after it
    board = __import__("types").ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", board)
    with pytest.raises(RepytilianError, match="^cannot write TensorBoard logs to /proc/tb: nothing can be "
                                              "written in /proc"):  # was a traceback from the writer
        train(options(corpus_file, tmp_path, tensorboard="/proc/tb"), on_event=events.append)
    assert events == []


@pytest.mark.machine
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(corpus_file, tmp_path):
    from repytilian.optim import MuonWithAdamW

    result = train(options(corpus_file, tmp_path, overrides={**TINY_OVERRIDES, "max_iters": 30, "optimizer": "muon"}))
    metrics = result.state.metrics
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    model = result.language_model.model
    optimizer = MuonWithAdamW(model, 1e-3, 0.1, (0.9, 0.99), fused=False)
    on_muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in on_muon) == (p.dim() == 2 and name.startswith("transformer.h.")), name
    assert json.loads((tmp_path / "model" / "config.json").read_text())["train"]["optimizer"] == "muon"


def test_muon_with_float16_is_refused_with_a_reason(corpus_file, tmp_path):
    with pytest.raises(RepytilianError, match="muon does not work with float16"):
        train(options(corpus_file, tmp_path, overrides={**TINY_OVERRIDES, "optimizer": "muon", "dtype": "float16"}))


def test_a_resume_cannot_switch_optimiser(corpus_file, tmp_path):
    train(options(corpus_file, tmp_path))
    with pytest.raises(RepytilianError, match="was trained with adamw; `load` continues it with the same optimiser"):
        train(options(corpus_file, tmp_path, load=str(tmp_path / "model"), overrides={"optimizer": "muon"}))


def test_gradient_accumulation_learns_what_one_big_batch_would(corpus_file, tmp_path):
    """--batch-size 16 in 4 micro-batches (--grad-accum 4), or in micro-batches of 2 (--micro-batch 2),
    takes the same steps as in one pass (float32)."""
    def weights(batch: int, **split) -> dict:
        over = {**TINY_OVERRIDES, "batch_size": batch, "max_iters": 6, "dtype": "float32",
                "dropout": 0.0, "eval_interval": 100, **split}
        model = train(options(corpus_file, tmp_path, overrides=over, out=None)).language_model.model
        return {k: v.clone() for k, v in model.state_dict().items()}

    one = weights(16, grad_accum=1)
    for split in ({"grad_accum": 4}, {"micro_batch": 2}):
        accumulated = weights(16, **split)
        assert all(torch.allclose(one[k], accumulated[k], rtol=1e-4, atol=1e-5) for k in one), split
    assert not torch.equal(one["lm_head.weight"], weights(4)["lm_head.weight"])  # a smaller batch differs


def test_the_micro_batches_are_chosen_to_fit_in_memory():
    from repytilian.config import ModelConfig, TrainConfig
    from repytilian.runtime.memory import training_bytes_per_window
    from repytilian.trainer import plan_batches

    mcfg, tcfg = ModelConfig(), TrainConfig(batch_size=64)
    per_window = training_bytes_per_window(mcfg, "float32")
    assert plan_batches(tcfg, mcfg, available=None).accum == 1  # memory unknown: one pass
    roomy = plan_batches(tcfg, mcfg, available=1000 * 64 * per_window)
    assert (roomy.micro_batch, roomy.accum, roomy.why) == (64, 1, None)
    tight = plan_batches(tcfg, mcfg, available=int(2.2 * 10 * per_window))  # half of it holds 11 windows
    assert (tight.micro_batch, tight.accum) == (8, 8) and "8 micro-batches of 8" in tight.why
    two = plan_batches(tcfg, mcfg, ranks=2, available=None)
    assert (two.micro_batch, two.accum) == (32, 1) and "on each of 2 processes" in two.describe()
    assert plan_batches(dataclasses.replace(tcfg, micro_batch=16), mcfg, ranks=2).accum == 2
    for cfg, ranks, setting in ((TrainConfig(batch_size=10), 4, "batch_size"),
                                (TrainConfig(batch_size=12, grad_accum=5), 1, "grad_accum"),
                                (TrainConfig(batch_size=12, micro_batch=5), 1, "micro_batch"),
                                (TrainConfig(batch_size=12, micro_batch=4, grad_accum=2), 1, "micro_batch")):
        with pytest.raises(SettingError) as caught:
            plan_batches(cfg, mcfg, ranks=ranks, available=None)
        assert caught.value.setting == setting


def test_cuda_graphs_only_for_one_process_stepping_whole_batches():
    """torch.compile's mode for training (runtime/device.py): CUDA graphs where they were measured to
    pay, torch's default elsewhere (CPUs, several processes, micro-batches)."""
    from repytilian.runtime.device import training_compile_mode

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert training_compile_mode(cuda, processes=1, micro_batches=1) == "reduce-overhead"
    assert training_compile_mode(cuda, processes=2, micro_batches=1) is None
    assert training_compile_mode(cuda, processes=1, micro_batches=4) is None
    assert training_compile_mode(cpu, processes=1, micro_batches=1) is None


def test_repytilian_train_can_be_called_again(tmp_path, corpus_file):
    """The training loop's module was repytilian/train.py: once a run had imported it, the package's
    attribute `train` was that module, and a second `repytilian.train(...)` (a notebook cell run
    again) was "TypeError: 'module' object is not callable"."""
    import subprocess
    import sys

    code = f"""
import repytilian
from repytilian.data import DataSource
options = dict(data=DataSource("file", {str(corpus_file)!r}), iterations="quick", out=None, progress=False,
               overrides={TINY_OVERRIDES!r})
for _ in range(2):
    result = repytilian.train(repytilian.TrainOptions(**options))
    assert result.stopped_by is None, result
from repytilian import train
assert callable(train)
print("trained twice")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "trained twice" in r.stdout, r.stderr[-2000:]


def test_train_options_take_a_path_for_data_and_a_number_of_steps(tmp_path, corpus_file):
    """As a Python user writes them: TrainOptions(data="my_book.txt") was AttributeError: 'str' object
    has no attribute 'kind', and iterations=50 an unknown preset, where `-i 50` is 50 steps."""
    result = train(TrainOptions(data=str(corpus_file), iterations=3, out=tmp_path / "m", progress=False,
                                overrides=TINY_OVERRIDES))
    assert result.state.step == 3 and result.saved_to == tmp_path / "m"
    assert set(result.language_model.tokenizer.itos) == set(corpus_file.read_text(encoding="utf-8"))
    assert TrainOptions(data=tmp_path).data == DataSource("dir", str(tmp_path))
    with pytest.raises(SettingError, match="iterations is 3 steps and max_iters 5"):
        TrainOptions(iterations=3, overrides={"max_iters": 5})
