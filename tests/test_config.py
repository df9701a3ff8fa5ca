import pytest
import torch

from repytilian.cli.flags import parse_set_options
from repytilian.config import ITERATIONS, SETTINGS, build_configs
from repytilian.data import DataSource
from repytilian.errors import RepytilianError


def test_presets_exist_as_documented():
    assert {"tiny", "default", "hyper", "speedrun"} <= set(SETTINGS)
    assert build_configs("speedrun", "long")[1].warmup_iters == 50  # the settings preset pins it
    assert {"quick", "default", "long", "forever"} == set(ITERATIONS)
    m, t = build_configs("hyper", "long")
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (6, 6, 384, 256)
    assert t.max_iters == 10_000
    assert build_configs("default", "forever")[1].max_iters is None


def test_quarter_is_fifteen_minutes_of_the_modern_v3c_width_at_context_256_with_qk_norm_and_the_attention_weights_whole():
    m, t = build_configs("quarter", "default")
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, t.batch_size) == (6, 6, 144, 256, 16)
    assert (m.position, m.norm, m.activation, m.bias) == ("rope", "rmsnorm", "swiglu", False)  # its own arch
    assert (m.dropout, m.attention_p, t.optimizer, t.max_seconds, m.qk_norm) == (0.1, 0.0, "muon", 900.0, True)
    classic = build_configs("quarter", "default", arch="classic")[0]  # an arch given wins over the preset's
    assert (classic.position, classic.norm, classic.n_embd, classic.qk_norm) == ("learned", "layernorm", 144, False)
    assert build_configs("quarter", "default", {"max_seconds": 60.0})[1].max_seconds == 60.0  # --budget wins
    assert build_configs("default", "default")[0].position == "learned"  # the others stay classic
    assert "arch" not in {**vars(m), **vars(t)}


def test_a_quarter_run_ends_by_its_budget_not_by_the_default_iterations(tmp_path):
    from repytilian.runs.assemble import fresh_run
    from repytilian.runs.options import TrainOptions

    (tmp_path / "cat.txt").write_text("the cat sat on the mat. " * 400)
    options = TrainOptions(data=DataSource("file", str(tmp_path / "cat.txt")), settings="quarter",
                           overrides={"block_size": 16})
    run = fresh_run(options, torch.device("cpu"), lambda event: None)
    assert run.tcfg.max_iters is None and run.tcfg.max_seconds == 900.0 and run.mcfg.position == "rope"


def test_tiny_is_nanogpts_cpu_recipe_and_classic_keeps_the_presets_biases():
    m, t = build_configs("tiny", "default", arch="classic")
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, t.batch_size, m.dropout) == (4, 4, 128, 64, 12, 0.0)
    assert m.bias is False  # nanoGPT's default
    assert build_configs("default", "default", arch="classic")[0].bias is True  # GPT-2's layout
    assert build_configs("tiny", "default", {"bias": True})[0].bias is True


def test_every_field_can_be_overridden_with_types_converted():
    over = parse_set_options(["n_layer=2", "lr=0.01", "iters=none", "bias=false", "batch_size=3"])
    m, t = build_configs("default", "default", over)
    assert m.n_layer == 2 and m.bias is False
    assert t.learning_rate == 0.01 and t.max_iters is None and t.batch_size == 3


@pytest.mark.parametrize("pairs, message", [
    (["batch_size=x"], "batch_size='x' is not a valid int"),  # was "<class 'int'>"
    (["dropout=lots"], "not a valid float"),
    (["bias=maybe"], "not a valid bool"),
    (["nonsense"], "NAME=VALUE"),
    (["wings=2"], "unknown setting 'wings'; known settings: activation, "),
    (["n_layers=2"], "unknown setting 'n_layers'; did you mean n_layer\\?$"),  # was the list of 38 alone
])
def test_bad_overrides_are_clear_errors(pairs, message):
    with pytest.raises(RepytilianError, match=message):
        build_configs("default", "default", parse_set_options(pairs))


def test_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DataSource("file", "book.txt").to_dict() == {"kind": "file", "value": str(tmp_path / "book.txt")}
    assert DataSource("dataset", "shakespeare").to_dict()["value"] == "shakespeare"


def test_every_flag_of_a_config_field_reaches_the_config_typed():
    """One typed path: each field with a flag becomes one, and its value lands in the config typed
    by the field's annotation (no list of names kept by hand, no reading of type names as text)."""
    import argparse

    from repytilian.cli.flags import FIELD_FLAGS, flag_fields
    from repytilian.cli.train import add_train_arguments
    from repytilian.cli.train import train_options as _train_options
    from repytilian.config import build_configs, field_type

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    argv, expected = [], {}
    for cls, f in flag_fields():
        kind, _ = field_type(cls, f.name)
        flag = FIELD_FLAGS[f.name]
        if kind is bool:
            argv.append(flag)
            expected[f.name] = True
        elif "choices" in f.metadata:
            argv += [flag, f.metadata["choices"][0]]
            expected[f.name] = f.metadata["choices"][0]
        else:
            text = "0.5" if kind is float else "3"
            argv += [flag, text]
            expected[f.name] = kind(text)
    options = _train_options(parser.parse_args(argv), None, None)
    assert options.overrides == expected
    assert all(type(v) is type(expected[k]) for k, v in options.overrides.items())
    mcfg, tcfg = build_configs("default", "default", options.overrides)
    for cls, f in flag_fields():
        assert getattr(mcfg if cls.__name__ == "ModelConfig" else tcfg, f.name) == expected[f.name]
    assert len(flag_fields()) >= 15  # every flag the README lists under overrides


def test_the_library_takes_typed_settings_and_the_command_line_turns_text_into_them():
    from repytilian.cli.flags import parse_set_options
    from repytilian.errors import SettingError

    assert parse_set_options(["n_layer=6", "lr=1e-3", "iters=none", "compile=yes"]) == \
        {"n_layer": 6, "learning_rate": 0.001, "max_iters": None, "compile": True}
    for name, text in [("n_layer", "6"), ("learning_rate", "1e-3"), ("bias", "false")]:
        with pytest.raises(SettingError, match=f"{name} must be"):  # text is the command line's to read
            build_configs("default", "default", {name: text})
    m, t = build_configs("default", "default", {"learning_rate": 1, "n_layer": 2})  # an int is a float's value
    assert t.learning_rate == 1.0 and isinstance(t.learning_rate, float) and m.n_layer == 2
    with pytest.raises(SettingError, match="wings is not a setting; the settings are: activation, "):
        build_configs("default", "default", {"wings": 2})
    with pytest.raises(SettingError, match="learningrate is not a setting; did you mean learning_rate\\?$"):
        build_configs("default", "default", {"learningrate": 2})


def test_train_options_check_their_settings_when_made():
    from repytilian.api import TrainOptions
    from repytilian.errors import SettingError

    assert TrainOptions(overrides={"block_size": 64, "learning_rate": 1}).overrides == {"block_size": 64,
                                                                                       "learning_rate": 1.0}
    with pytest.raises(SettingError, match="block_size must be an int, got '64'"):
        TrainOptions(overrides={"block_size": "64"})
    # a misspelt keyword was Python's "unexpected keyword argument 'iteration'" alone
    with pytest.raises(TypeError, match="'iteration' \\(did you mean 'iterations'\\?\\)"):
        TrainOptions(iteration="quick")
    with pytest.raises(TypeError, match="a setting goes in overrides=\\{'learning_rate': ...\\}"):
        TrainOptions(learning_rate=1e-3)
    # iterations="500", as -i 500 takes it, was "unknown `iterations` preset '500'"
    assert TrainOptions(iterations="500").overrides["max_iters"] == 500
    assert TrainOptions(iterations="Quick").iterations == "quick"  # presets in any case, as typed



def test_a_message_naming_any_setting_names_a_flag_the_command_line_takes():
    """Library messages name settings in backquotes and the command line writes each as its flag.
    A field without a flag of its own (`value_embeddings`, `qk_norm`) came out as --value-embeddings,
    a flag no command has; it is now said as --set NAME=..., which takes every field."""
    import argparse

    from repytilian.cli.flags import flag_for, in_flags
    from repytilian.cli.train import add_train_arguments
    from repytilian.config import MODEL_FIELDS, TRAIN_FIELDS

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for name in MODEL_FIELDS | TRAIN_FIELDS:
        assert flag_for(name) in parser._option_string_actions or flag_for(name) == f"--set {name}=...", name
    assert flag_for("value_embeddings") == "--set value_embeddings=..." and flag_for("max_seconds") == "--budget"
    error = RepytilianError("needs `value_embeddings` off", ("value_embeddings",))
    assert in_flags(error) == "needs --set value_embeddings=... off"
