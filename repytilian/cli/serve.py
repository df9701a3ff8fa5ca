"""`repytilian serve`: the playground and the OpenAI-compatible API on one local server."""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from ..errors import RepytilianError
from .common import dtype_name, seconds

KEY_VARIABLE = "REPYTILIAN_API_KEY"
DECODING_FORMATS = ("auto", "float32", "bfloat16", "float16")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serve.limits import Limits  # torch-free: --help stays fast

    which = parser.add_mutually_exclusive_group()
    which.add_argument("-m", "--model", help="serve this one model folder")
    which.add_argument("--models", default="models",
                       help="serve every model folder under this folder (default: models)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--device", default="cpu", help="where the models run (default cpu)")
    d = Limits()
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, help=f"most tokens a request may ask for (default {d.max_tokens})")
    parser.add_argument("--max-concurrent", type=int, default=d.max_active,
                        help=f"generations at once, decoding together in one batch (default {d.max_active}); "
                             "more wait in a queue")
    parser.add_argument("--max-batch", type=int, default=d.max_batch_rows,
                        help=f"samples a model decodes together (default {d.max_batch_rows}; a request's n "
                             "counts each); more wait for a row")
    parser.add_argument("--lanes", type=int, default=None,
                        help="batches a model decodes side by side on a CPU, a request going to the one with the "
                             "fewest (default: 2 from 2 cores where its decoding steps are built, --compile; else 1)")
    parser.add_argument("--max-queue", type=int, default=d.max_waiting,
                        help=f"requests that may wait for a turn (default {d.max_waiting}); beyond: 429")
    parser.add_argument("--max-seconds", type=seconds, default=d.max_seconds,
                        help=f"generation time per request (default {d.max_seconds:g} s)")
    parser.add_argument("--compile", action="store_true",
                        help="build each model's decoding step as it is loaded (20-40 s the first time for a model "
                             "on this machine, then kept): about twice the tokens/s on a CPU, alone or in batches")
    parser.add_argument("--dtype", default="auto", choices=DECODING_FORMATS, type=dtype_name,
                        help="the decoding matrices' format: auto (default) is float32 below 256 wide, which "
                             "gives every surface the same text for a seed, and 16 bits from there where faster; "
                             "bfloat16 where the CPU has it natively is faster with --compile "
                             "(AMX: a quarter more tokens/s at 128 wide), its text parting from float32's")
    parser.add_argument("--max-loaded", type=int, default=4,
                        help="models kept in memory at once (default 4); the least recently used is let go first")
    access = parser.add_argument_group("who may use it")
    access.add_argument("--api-key", default=None, metavar="KEY",
                        help=f"every /v1 and /api request needs Authorization: Bearer KEY (or set {KEY_VARIABLE}, "
                             "or --api-key-file)")
    access.add_argument("--api-key-file", default=None, metavar="FILE", help="read the key from this file")
    access.add_argument("--no-auth", action="store_true",
                        help="listen beyond this machine without a key (refused otherwise)")
    access.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests addressed to this host name (repeatable; on 127.0.0.1 only "
                             "localhost names are answered, against DNS rebinding)")
    access.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages of this origin (e.g. http://localhost:3000) call the API (repeatable)")


def is_loopback(host: str) -> bool:
    from ..serve.guard import is_loopback as loopback  # the one rule, the guard's

    return loopback(host)


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or REPYTILIAN_API_KEY (in that order), or None."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise RepytilianError(f"--api-key-file: cannot read {args.api_key_file}: {getattr(e, 'strerror', e)}") from None
        if not key:
            raise RepytilianError(f"--api-key-file: {args.api_key_file} is empty")
        return args.api_key or key
    return args.api_key or os.environ.get(KEY_VARIABLE) or None


def _show_server_log() -> None:
    """The server's log lines (serve/http.log) on stderr, one line each."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("repytilian serve: %(message)s"))
    logger = logging.getLogger("repytilian.serve")
    logger.addHandler(handler)
    logger.propagate = False


def _check_limits(args: argparse.Namespace) -> None:
    for name in ("max_tokens", "max_concurrent", "max_queue", "max_loaded", "max_batch"):
        if getattr(args, name) < 1:
            raise RepytilianError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lanes is not None and args.lanes < 1:
        raise RepytilianError("--lanes must be at least 1")
    from ..runtime.cpu import usable_cores

    cores = usable_cores()
    if args.lanes is not None and args.lanes > cores:  # taken: the user chose, though it only costs
        print(f"warning: --lanes {args.lanes} on {cores} core{'s' * (cores > 1)}: at most {cores} lane"
              f"{'s' * (cores > 1)} decode at once, the others take turns with them, each batch smaller",
              file=sys.stderr, flush=True)
    if not args.max_seconds > 0:
        raise RepytilianError("--max-seconds must be more than 0")


def _decoding_dtype(args: argparse.Namespace):
    """--dtype as a torch format (None for auto); bf16 refused where the CPU would emulate it."""
    if args.dtype == "auto":
        return None
    import torch

    from ..runtime.precision import cpu_bf16

    if args.dtype == "bfloat16" and args.device == "cpu" and not cpu_bf16().native:
        raise RepytilianError(f"--dtype bfloat16: this CPU has no native bf16 ({cpu_bf16().why}), so it would "
                              "decode about 100x slower; leave --dtype auto")
    return getattr(torch, args.dtype)


def _say_what_is_served(args: argparse.Namespace, registry) -> None:
    models = registry.scan()
    what = ", ".join(m.id for m in models[:6]) + (" ..." if len(models) > 6 else "") or "none yet"
    print(f"models: {what}", file=sys.stderr, flush=True)
    if not args.compile and args.device == "cpu":  # measured: v2c 4.7x alone, 3x with 8 clients (docs/serving.md)
        print("decoding: steps built before are used; --compile builds them as each model loads (20-40 s once "
              "a model on this machine), several times the tokens/s", file=sys.stderr, flush=True)


def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise RepytilianError(f"repytilian serve needs the serve extra ({e.name} is missing): "
                              "pip install 'repytilian[serve]'") from None
    from ..serve.limits import Limits
    from ..serve.registry import Registry

    _check_limits(args)
    if not 0 <= args.port <= 65535:
        raise RepytilianError(f"--port must be from 0 to 65535, got {args.port}")
    where = {"single": Path(args.model)} if args.model else {"root": Path(args.models)}
    registry = Registry(**where, device=args.device, max_loaded=args.max_loaded, compile=args.compile,
                        dtype=_decoding_dtype(args))
    limits = Limits(max_tokens=args.max_tokens, max_active=args.max_concurrent, max_waiting=args.max_queue,
                    max_seconds=args.max_seconds, max_batch_rows=args.max_batch, lanes=args.lanes)
    from ..serve.guard import Guard

    key = api_key(args)
    local = is_loopback(args.host)
    if not local and key is None and not args.no_auth:
        raise RepytilianError(f"listening on {args.host} lets anyone who can reach this machine use these models: "
                              f"give a key (--api-key KEY, --api-key-file FILE or {KEY_VARIABLE}), or --no-auth "
                              "to serve them to everyone, or --host 127.0.0.1 for this machine only")
    app = create_app(registry, limits, Guard(local_only=local, allowed_hosts=args.allow_host,
                                             cors_origins=args.cors_origin, api_key=key))
    if not local and key is None:
        print(f"warning: listening on {args.host} without a key (--no-auth): anyone who can reach this machine on "
              f"port {args.port} can use these models", file=sys.stderr, flush=True)
    # The event loop's thread computes on one thread from here (serve/admission.py says why); the
    # server has read the decoding threads already
    import torch

    torch.set_num_threads(1)
    _show_server_log()
    listening = _listening_socket(args.host, args.port)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    _say_what_is_served(args, registry)

    started = server.startup

    async def announce(*a, **k):  # the real port, once it is bound (--port 0 picks one)
        await started(*a, **k)
        for s in server.servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"serving on http://{shown}:{port}/ (playground) and http://{shown}:{port}/v1 "
                      "(OpenAI-compatible API); Ctrl+C stops", file=sys.stderr, flush=True)
                return

    server.startup = announce
    server.run(sockets=[listening])
    return 0


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound as uvicorn binds one, but here: a port in use (a second `serve`)
    was uvicorn's "ERROR: [Errno 98] error while attempting to bind on address"."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise RepytilianError(f"port {port} on {host} is in use already (another server, or another repytilian serve): "
                                  "stop it, or choose another port with --port (--port 0 takes a free one)") from None
        if e.errno == errno.EACCES:
            raise RepytilianError(f"no permission to listen on port {port} (ports below 1024 need administrator "
                                  "rights): choose another with --port, e.g. --port 8000") from None
        raise RepytilianError(f"cannot listen on {host}, port {port}: {e.strerror or e}; give --host an address "
                              "of this machine (127.0.0.1: this machine only)") from None
    sock.set_inheritable(True)
    return sock
