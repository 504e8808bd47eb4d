"""`genloom serve`: an OpenAI-compatible HTTP server with exact token healing and a playground.

    genloom serve --model smollm2-135m                 # http://127.0.0.1:8000
    genloom serve --model models/zh-lm --port 9000 --api-key secret
    genloom serve --model smollm2-135m --engine llamacpp --quant f16

The model loads once (`tasks.lm.load.load_model`: a genloom model directory, "smollm2-135m", a
Hugging Face directory or a .gguf); the engine thread (serve/engine.py) decodes every request in
one batch; the API is serve/app.py. Needs the `serve` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from genloom.cliargs import add_common, positive_float, positive_int
from genloom.errors import UserError

ENGINES = ("genloom", "hf", "llamacpp")


def served_name(source: str) -> str:
    """The model id clients name: the --model argument's last path part."""
    return Path(source.rstrip("/")).name or source


def build(args: argparse.Namespace) -> Any:
    """Load the model and make the app (no server started)."""
    from genloom.cliargs import set_threads
    from genloom.decode.protocol import context_length
    from genloom.serve.app import Limits, Served, create_app
    from genloom.serve.engine import Engine
    from genloom.tasks.lm.continue_ import start_token
    from genloom.tasks.lm.load import is_genloom_dir, load_model

    set_threads(args.threads)
    model, tokenizer = load_model(args.model, engine=args.engine, quant=args.quant)
    if hasattr(model, "eval"):
        model.eval()
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=args.max_queue)
    limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens, timeout=args.timeout)
    served = Served(engine=engine, name=args.name or served_name(args.model), context=context_length(model),
                    bos_id=start_token(tokenizer, "auto", hf=not is_genloom_dir(args.model)), limits=limits,
                    api_key=args.api_key)
    return create_app(served), served


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise UserError("genloom serve needs the serve extra: pip install 'genloom[serve]'") from None
    app, served = build(args)
    url = f"http://{args.host}:{args.port}"
    auth = f" -H 'Authorization: Bearer {args.api_key}'" if args.api_key else ""
    if not args.quiet:
        print(f"genloom serve: {served.name} at {url}/v1 (playground: {url}/)", file=sys.stderr)
        print(f"  curl {url}/v1/completions -H 'Content-Type: application/json'{auth} "
              f"-d '{{\"model\": \"{served.name}\", \"prompt\": \"import num\", \"max_tokens\": 16, \"temperature\": 0}}'",
              file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    return 0


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, description=help)
    add_common(p, model="genloom model directory, or Hugging Face name (smollm2-135m) / directory / .gguf",
               threads=True, quiet=True)
    p.add_argument("--engine", choices=ENGINES, default="genloom",
                   help="genloom's Transformer (continuous batching), the Hugging Face model as it is, or "
                        "llama.cpp for GGUF models (both batched by waves) (default genloom)")
    p.add_argument("--quant", choices=("f32", "f16", "q8_0", "q4_0", "q4_1"),
                   help="--engine llamacpp: requantize the GGUF (default: the file as it is)")
    p.add_argument("--name", help="the model id clients use (default: the --model argument's last part)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: none)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="most rows decoded at once (default 64)")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="most requests waiting; more get 429 (default 256)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=4096, help="longest prompt (default 4096)")
    p.add_argument("--max-tokens", type=positive_int, default=1024, help="most new tokens per request (default 1024)")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="seconds a request may take (default 300)")

    def _run(args: argparse.Namespace) -> int:
        if args.quant and args.engine != "llamacpp":
            raise UserError("--quant applies to --engine llamacpp only")
        if args.port > 65535:
            raise UserError(f"--port {args.port} is not a port (1-65535)")
        return run(args)

    p.set_defaults(func=_run)
    return p
