"""rlhfkit label: serve the labeling app, make projects and annotators, export, stats.

    rlhfkit label create-project --db feedback.sqlite --name demo --candidates cands.jsonl --overlap 2
    rlhfkit label add-annotator  --db feedback.sqlite --project demo --name alice
    rlhfkit label serve          --db feedback.sqlite            # prints the admin and annotator links
    rlhfkit label serve          --db postgresql://labels@dbhost/labels   # a team: a PostgreSQL server
    rlhfkit label stats          --db feedback.sqlite --project demo --output stats.json
    rlhfkit label export         --db feedback.sqlite --project demo --pairwise prefs.jsonl

Also runs on its own: ``python -m rlhfkit.feedback.app.cli serve --db feedback.sqlite``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

from rlhfkit.feedback.app import service
from rlhfkit.feedback.app.items import MODES, InputError
from rlhfkit.feedback.app.storage import Refused, open_storage

DB_HELP = ("the feedback database: a SQLite file (made if missing), sqlite:///path, or a PostgreSQL server's "
           "postgresql://user[:password]@host[:port]/dbname (the schema is created or upgraded on start)")


def _scorer(model_dir: str | None):
    if model_dir is None:
        return None
    from rlhfkit.feedback.app.active import load_scorer

    return load_scorer(model_dir)


def _write_jsonl(records: list[dict], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(out)  # a crash never leaves half a file


# ---------------------------------------------------------------- commands


def cmd_create_project(args) -> int:
    if bool(args.prompts) != bool(args.policy):
        raise Refused(2, "--prompts and --policy go together (or give --candidates alone)")
    store = open_storage(args.db)
    source = args.candidates or args.prompts
    text = Path(source).read_text(encoding="utf-8")
    guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else ""
    project = service.create_project(
        store, name=args.name, mode=args.mode, source=source, overlap=args.overlap,
        strength_scale=args.strength_scale, guidelines=guidelines, scorer=_scorer(args.reward_model),
        **({"candidates_jsonl": text} if args.candidates else
           {"prompts_jsonl": text, "policy_dir": args.policy, "k": args.k, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "seed": args.seed}))
    print(f"project {project['id']} {project['name']!r}: {project['mode']}, {project['items']} items "
          f"({project['gold_items']} gold), overlap {project['overlap']}")
    if project["dropped_prompts"]:
        print(f"  {project['dropped_prompts']} prompt(s) dropped: fewer than 2 distinct sampled responses")
    return 0


def cmd_add_annotator(args) -> int:
    store = open_storage(args.db)
    annotator = store.add_annotator(store.project(args.project)["id"], args.name)
    print(f"{annotator['name']}: {args.url.rstrip('/')}/label#token={annotator['token']}")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from rlhfkit.feedback.app.server import create_app

    store = open_storage(args.db)
    admin_token = args.admin_token or os.environ.get("RLHFKIT_ADMIN_TOKEN") or store.admin_token()
    scorer = _scorer(args.reward_model)
    if scorer is not None:
        for project in store.projects():
            n = service.rescore(store, project["id"], scorer)
            print(f"scored {n} items of project {project['name']!r} with {args.reward_model}")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    base = f"http://{'[' + args.host + ']' if family == socket.AF_INET6 else args.host}:{port}"
    if not ipaddress.ip_address(socket.gethostbyname(args.host) if family == socket.AF_INET else args.host).is_loopback:
        print(f"warning: listening on {args.host} over plain HTTP: put it behind an HTTPS proxy", file=sys.stderr)
    print(f"rlhfkit label: {store.db.describe()} on {base}")
    print(f"  admin: {base}/admin#token={admin_token}")
    for project in store.projects():
        print(f"  project {project['id']} {project['name']!r} ({project['mode']}, {project['items']} items):")
        for a in store.annotators(project["id"]):
            print(f"    {a['name']}: {base}/label#token={a['token']}")
    print("Ctrl-C stops the server; every label is saved the moment it is submitted.", flush=True)
    app = create_app(store, admin_token=admin_token, scorer=scorer)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def cmd_export(args) -> int:
    if not (args.pairwise or args.ranking):
        raise Refused(2, "give --pairwise FILE and/or --ranking FILE")
    store = open_storage(args.db)
    project = store.project(args.project)
    for fmt, path in (("pairwise", args.pairwise), ("ranking", args.ranking)):
        if path:
            records = service.export(store, project["id"], fmt, drop_ties=args.drop_ties)
            _write_jsonl(records, path)
            print(f"wrote {len(records)} {fmt} record(s) to {path}")
    labeled = {lab["item_id"] for lab in store.labels(project["id"])}
    print(f"{len(labeled)} of {project['items']} items have labels; the others (unlabeled or only skipped) "
          f"are not exported")
    return 0


def cmd_stats(args) -> int:
    store = open_storage(args.db)
    report = service.stats(store, args.project)
    p = report["project"]
    print(f"project {p['id']} {p['name']!r}: {report['labels']} labels on {report['items_labeled']} of "
          f"{p['items']} items; {report['units_with_overlap']} of {report['units']} units labeled by 2 or more")
    print(f"  Krippendorff's alpha: ordinal {report['alpha_ordinal']}, nominal {report['alpha_nominal']}; "
          f"gold accuracy {report['gold_accuracy']}")
    b = report["budget"]
    print(f"  budget: {b['hours']} h of labelling, {b['labels_per_hour']} labels per hour, "
          f"median {b['median_seconds']} s per item")
    for a in report["annotators"]:
        print(f"  {a['name']}: {a['done']} done, {a['skipped']} skipped; {a['labels_per_hour']} labels per hour, "
              f"median {a['median_seconds']} s per item; agrees with consensus "
              f"{a['consensus_agreement']} ({a['consensus_units']} units); gold {a['gold_accuracy']} "
              f"({a['gold_units']} units)")
        for d in a.get("daily", []):
            print(f"    {d['day']}: consensus {d['consensus_agreement']} ({d['consensus_units']}), "
                  f"gold {d['gold_accuracy']} ({d['gold_units']})")
    for k in report["kappa"]:
        print(f"  kappa {k['annotators'][0]} / {k['annotators'][1]}: {k['kappa']} ({k['units']} shared units)")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------- parsers


def _guarded(command):
    """The command, with bad input reported as a one-line error and exit code 2 (not a traceback)."""

    def func(args) -> int:
        try:
            return command(args)
        except (InputError, Refused, OSError) as err:
            print(f"error: {getattr(err, 'message', None) or err}", file=sys.stderr)
            return 2

    func.__name__ = command.__name__
    return func


def _add_commands(sub) -> None:
    s = sub.add_parser("serve", help="start the web app and print the admin and annotator links",
                       description="Start the labeling app under uvicorn; prints the admin link and each "
                                   "annotator's personal link.")
    s.add_argument("--db", required=True, help=DB_HELP)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    s.add_argument("--admin-token", help="admin token (default: $RLHFKIT_ADMIN_TOKEN, else one kept in the db)")
    s.add_argument("--reward-model", help="reward model folder: serve the items it is least sure about first")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_guarded(cmd_serve))

    s = sub.add_parser("create-project", help="make a labeling project from candidates or a policy",
                       description="Make a project from a JSONL of {prompt, responses, gold?} (--candidates), or "
                                   "by sampling K responses per prompt from a policy folder (--prompts, --policy).")
    s.add_argument("--db", required=True, help=DB_HELP)
    s.add_argument("--name", required=True, help="project name (unique)")
    s.add_argument("--mode", choices=MODES, default="pairwise",
                   help="pairwise: A / B / tie per pair of responses; ranking: order all K (ties allowed)")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--candidates", help='JSONL of {"prompt", "responses": [...], "gold"?: ranking}')
    source.add_argument("--prompts", help='JSONL of {"prompt"} to sample responses for (with --policy)')
    s.add_argument("--policy", help="policy model folder to sample K responses per prompt from")
    s.add_argument("--k", type=int, default=2, help="responses to sample per prompt")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overlap", type=int, default=1, help="annotators per item (N)")
    s.add_argument("--strength-scale", type=int, default=0,
                   help="pairwise only: steps of 'how much better' (e.g. 3: slightly / clearly / much), exported as 'strength'; 0 = none")
    s.add_argument("--guidelines", help="text or markdown file shown to annotators (key g)")
    s.add_argument("--reward-model", help="reward model folder: order items most uncertain first")
    s.set_defaults(func=_guarded(cmd_create_project))

    s = sub.add_parser("add-annotator", help="add an annotator and print their personal link")
    s.add_argument("--db", required=True, help=DB_HELP)
    s.add_argument("--project", required=True, help="project id or name")
    s.add_argument("--name", required=True, help="annotator name (unique in the project; exported as their id)")
    s.add_argument("--url", default="http://127.0.0.1:8000", help="the server's address, for the printed link")
    s.set_defaults(func=_guarded(cmd_add_annotator))

    s = sub.add_parser("export", help="write pairwise and/or ranking JSONL for rlhfkit reward / dpo")
    s.add_argument("--db", required=True, help=DB_HELP)
    s.add_argument("--project", required=True, help="project id or name")
    s.add_argument("--pairwise", help="output: {prompt, chosen, rejected, label_prob, annotator} per pair")
    s.add_argument("--ranking", help="output: {prompt, responses, ranking, annotator} per item")
    s.add_argument("--drop-ties", action="store_true", help="leave out pairs whose label_prob is exactly 0.5")
    s.set_defaults(func=_guarded(cmd_export))

    s = sub.add_parser("stats", help="progress, agreement (Krippendorff's alpha, Cohen's kappa, gold accuracy; "
                                     "per annotator and day) and the budget: labels per hour, seconds per item")
    s.add_argument("--db", required=True, help=DB_HELP)
    s.add_argument("--project", required=True, help="project id or name")
    s.add_argument("--output", help="also write the figures as JSON here")
    s.set_defaults(func=_guarded(cmd_stats))


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``label`` and its sub-commands to the main CLI's sub-parsers."""
    parser = subparsers.add_parser("label", help="the human-feedback web app",
                                   description="Collect human preferences in the browser: serve the labeling app, make "
                                               "projects and annotators, export the labels, report agreement.")
    _add_commands(parser.add_subparsers(dest="label_command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhfkit label", description=__doc__.split("\n")[0])
    _add_commands(parser.add_subparsers(dest="label_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
