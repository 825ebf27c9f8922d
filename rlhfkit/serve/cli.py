"""rlhfkit serve: a causal LM as an OpenAI-compatible judge, a reward model as a /score endpoint.

    rlhfkit serve --model runs/sft/final                           # chat: http://127.0.0.1:8000/v1
    rlhfkit serve --model runs/sft/final --reward-model runs/rm/final --port 8001
    RLHFKIT_API_KEY=secret rlhfkit serve --model judge/ --api-key-env RLHFKIT_API_KEY

Also runs on its own: ``python -m rlhfkit.serve.cli --model DIR``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

INSTALL_HINT = "rlhfkit serve needs FastAPI and uvicorn: pip install 'rlhfkit[app]'"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host) if ":" not in host else host).is_loopback
    except (OSError, ValueError):
        return False


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from rlhfkit.models.reward_model import is_reward_folder
    from rlhfkit.serve.server import create_app, load_backends

    if not (args.model or args.reward_model):
        print("error: give --model DIR (a causal LM or a reward model) and/or --reward-model DIR", file=sys.stderr)
        return 2
    for flag, value in (("--max-new-tokens-limit", args.max_new_tokens_limit), ("--max-context", args.max_context)):
        if value is not None and value < 1:
            print(f"error: {flag} must be >= 1", file=sys.stderr)
            return 2
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: --api-key-env {args.api_key_env}: that environment variable is not set (or empty)",
                  file=sys.stderr)
            return 2
    try:
        if args.reward_model and not is_reward_folder(args.reward_model):
            print(f"error: --reward-model {args.reward_model} is not a reward model folder (a causal LM goes in "
                  f"--model)", file=sys.stderr)
            return 2
        backends = load_backends([d for d in (args.model, args.reward_model) if d], served_name=args.served_name,
                                 precision=args.precision, device=args.device,
                                 max_context=args.max_context)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    base = f"http://{'[' + args.host + ']' if family == socket.AF_INET6 else args.host}:{port}"
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host} over plain HTTP" + ("" if api_key else " with no API key"),
              file=sys.stderr)
    print(f"rlhfkit serve on {base}" + (" (API key required)" if api_key else ""))
    print(f"  GET  {base}/health")
    print(f"  GET  {base}/v1/models")
    if backends.chat is not None and getattr(backends.chat.tokenizer, "chat_template", None) is None:
        print(f"warning: {args.model} has no chat template: /v1/chat/completions will answer 400", file=sys.stderr)
    if backends.chat is not None:
        print(f"  POST {base}/v1/chat/completions   model {backends.chat.name!r}  (OpenAI base_url: {base}/v1)")
        print(f"  POST {base}/v1/completions        rollouts: token-id prompts, n, seed, log-probs, token ids "
              f"(rollout.url={base})")
        print(f"  POST {base}/reload_weights        {{\"path\": folder, \"version\": k}}; POST /update_weights; "
              f"GET /weights_version")
    if backends.scorer is not None:
        print(f"  POST {base}/score                  reward model {backends.reward_name!r}  (reward.url={base}/score)")
    print("Ctrl-C stops the server.", flush=True)
    app = create_app(backends, api_key=api_key, max_new_tokens_limit=args.max_new_tokens_limit)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder: a causal LM (chat completions) or a reward model / "
                                        "ensemble folder (/score)")
    parser.add_argument("--reward-model", help="reward model or ensemble folder served at /score, next to --model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument("--served-name", help="the model name clients send and see (default: the folder's name)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="weights' dtype")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--max-new-tokens-limit", type=int, default=1024,
                        help="cap on max_tokens of any request (default: 1024)")
    parser.add_argument("--max-context", type=int, help="longest prompt + completion accepted (default: the "
                        "model's max_position_embeddings; more only for rotary-position models, at your risk)")
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="environment variable holding an API key; requests must send 'Authorization: Bearer <key>'")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=cmd_serve)


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the main CLI's sub-parsers."""
    parser = subparsers.add_parser("serve", help="serve a model over HTTP: OpenAI chat completions and /score",
                                   description="Serve a causal LM over an OpenAI-compatible /v1/chat/completions "
                                               "(with logprobs) and/or a reward model over /score.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhfkit serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
