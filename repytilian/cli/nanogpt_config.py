"""nanoGPT's config files on training.py's command line: `python3 training.py config/train_shakespeare_char.py`.

nanoGPT's train.py runs a config file with exec(); here it is read, never run: its `name = value`
lines whose value is a literal (or arithmetic on numbers, `5 * 8`) become this tool's flags, put
before the command line's own so that those win, as nanoGPT's `--key=value` after the file does.
Fields with the same name and meaning go through `with_our_flags`; nanoGPT's batch (`batch_size`
sequences a micro-step, `gradient_accumulation_steps` of them) is a step of both multiplied here,
with `batch_size` as the micro-batch; what has no counterpart is named in a note, never dropped
in silence. Fields the file leaves out take nanoGPT's train.py defaults where the two tools
differ in what they mean for the run (its AdamW, no biases, clipping), and this tool's elsewhere.
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any

from ..config import MODEL_FIELDS, TRAIN_FIELDS
from ..errors import RepytilianError

# nanoGPT's train.py defaults that its config files rely on and this tool's presets set otherwise
NANOGPT_DEFAULTS = {"optimizer": "adamw", "bias": False, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
                    "grad_clip": 1.0, "dropout": 0.0}
# nanoGPT's names with nothing to do here: logging, checkpoint policy, DDP backend, run names
NOT_NEEDED = {"log_interval", "always_save_checkpoint", "wandb_project", "wandb_run_name", "backend", "eval_only"}
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def is_config_file(argv: list[str], i: int) -> bool:
    """Whether argv[i] is a config file given as nanoGPT takes one: a .py file that is no flag's value."""
    word = argv[i]
    after_flag = i > 0 and argv[i - 1].startswith("-") and "=" not in argv[i - 1]
    return word.endswith(".py") and not word.startswith("-") and not after_flag


def with_config_files(argv: list[str], say) -> list[str]:
    """`argv` with each nanoGPT config file replaced by the flags it sets (before the others)."""
    files = [i for i in range(len(argv)) if is_config_file(argv, i)]
    if not files:
        return argv
    read: list[str] = []
    for i in files:
        read += config_flags(Path(argv[i]), say)
    return read + [word for i, word in enumerate(argv) if i not in files]


def config_flags(path: Path, say) -> list[str]:
    values = _assignments(path)
    flags = [f"--{name}={_text(value)}" for name, value in NANOGPT_DEFAULTS.items() if name not in values]
    unused = []
    micro, accum = values.pop("batch_size", None), values.pop("gradient_accumulation_steps", 1)
    if not all(_whole(v) for v in (micro or 1, accum)):
        raise RepytilianError(f"{path}: batch_size and gradient_accumulation_steps must be whole numbers, got "
                              f"{micro!r} and {accum!r}")
    micro, accum = (int(v) if v is not None else None for v in (micro, accum))
    if micro is not None:
        flags.append(f"--batch_size={micro * accum}")
        if accum > 1:
            flags.append(f"--micro_batch={micro}")
    elif accum != 1:
        unused.append("gradient_accumulation_steps")
    for name, value in values.items():
        if name in MODEL_FIELDS | TRAIN_FIELDS:
            flags.append(f"--{name}={_text(value)}")
        elif name == "out_dir":
            flags += ["-m", str(value)]
        elif name in ("device", "dtype"):
            flags.append(f"--{name}={value}")
        elif name == "wandb_log":
            flags += ["--wandb"] if value else []
        elif name == "lr_decay_iters" and value == values.get("max_iters"):
            pass  # the schedule decays over max_iters here, as nanoGPT's configs ask
        elif name not in NOT_NEEDED and name != "dataset":  # (the dataset has words of its own below)
            unused.append(f"{name}={value!r}")
    dataset = values.get("dataset")
    say(f"note: read {path} as nanoGPT's train.py would, without running it: {' '.join(flags)}"
        + (f"; not used here: {', '.join(unused)}" if unused else "")
        + (f" (its dataset is nanoGPT's prepared {dataset!r}: here -d or -p gives the text, Tiny Shakespeare "
           "by default)" if dataset else ""))
    return flags


def _assignments(path: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except FileNotFoundError:
        raise RepytilianError(f"no such config file: {path}") from None
    except (OSError, UnicodeDecodeError, SyntaxError) as e:
        raise RepytilianError(f"cannot read {path} as a nanoGPT config file ({type(e).__name__}: {e})") from None
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = _literal(node.value)
            except (ValueError, TypeError, ArithmeticError, RecursionError):
                pass  # `wandb_run_name = 'ft-' + str(time.time())`: nothing a run here needs
    return values


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            return ARITHMETIC[type(node.op)](left, right)
        raise ValueError("not arithmetic on numbers")
    return ast.literal_eval(node)


def _whole(value: Any) -> bool:  # 12, or 40 / 8 (5.0)
    return not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer()


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
