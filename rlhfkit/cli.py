"""``rlhfkit <stage> [--config file.yaml] [--output-dir DIR] [--resume] [key.sub=value ...]``.

Each training stage is a config dataclass and a run function; ``rlhfkit <stage> --help`` prints
every config field with its type, default and documentation. Modules are imported only when their
stage runs, so ``rlhfkit --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from rlhfkit.config import ConfigError, describe, load_config


@dataclass(frozen=True)
class Stage:
    module: str
    config: str
    run: str
    help: str


STAGES: dict[str, Stage] = {
    "pretrain": Stage("rlhfkit.train.sft", "PretrainConfig", "run_pretrain",
                      "pre-train a (tiny) causal LM from scratch on raw text"),
    "sft": Stage("rlhfkit.train.sft", "SFTConfig", "run_sft", "supervised fine-tuning on demonstrations"),
    "demo": Stage("rlhfkit.demo.pipeline", "DemoConfig", "run_demo",
                  "the whole pipeline on the built-in task; writes summary.json and report.md"),
}

# Stages added by later modules register here when those modules exist.
OPTIONAL_STAGES: dict[str, Stage] = {
    "reward": Stage("rlhfkit.train.reward_model", "RewardConfig", "run_reward",
                    "train a reward model from pairwise preferences and rankings"),
    "dpo": Stage("rlhfkit.train.direct.dpo", "DPOConfig", "run_dpo", "DPO / IPO / hinge / robust DPO"),
    "orpo": Stage("rlhfkit.train.direct.orpo", "ORPOConfig", "run_orpo", "ORPO (no reference model)"),
    "simpo": Stage("rlhfkit.train.direct.simpo", "SimPOConfig", "run_simpo", "SimPO (no reference model)"),
    "kto": Stage("rlhfkit.train.direct.kto", "KTOConfig", "run_kto", "KTO on unpaired or split pairwise data"),
    "ppo": Stage("rlhfkit.train.rl.ppo", "PPOConfig", "run_ppo", "PPO against a reward with a KL penalty"),
    "grpo": Stage("rlhfkit.train.rl.grpo", "GRPOConfig", "run_grpo", "GRPO: group-normalised advantages"),
    "rloo": Stage("rlhfkit.train.rl.rloo", "RLOOConfig", "run_rloo", "RLOO: leave-one-out baseline"),
    "judge": Stage("rlhfkit.feedback.judging", "JudgeRunConfig", "run_judge",
                   "AI preference labels (RLAIF): a judge compares candidate responses"),
    "eval-rm": Stage("rlhfkit.evaluate.rm_run", "EvalRMConfig", "run_eval_rm",
                     "reward models on a preference set: accuracy (ties wrong), best-of-K, ECE, ensembles"),
    "constitution": Stage("rlhfkit.feedback.constitution.run", "ConstitutionConfig", "run_constitution",
                          "Constitutional AI: critique → revision SFT data, then AI preference labels"),
    "eval": Stage("rlhfkit.evaluate.policy_eval", "EvalConfig", "run_eval",
                  "policies against a baseline: win rate by any judge, length-controlled win rate, KL, diversity"),
}


def _available() -> dict[str, Stage]:
    stages = dict(STAGES)
    for name, stage in OPTIONAL_STAGES.items():
        if importlib.util.find_spec(stage.module) is not None:
            stages[name] = stage
    return stages


def _stage_parser(sub, name: str, stage: Stage) -> None:
    def help_text() -> str:
        cls = getattr(importlib.import_module(stage.module), stage.config)
        return f"config fields (set with key=value or in --config YAML):\n{describe(cls)}"

    parser = sub.add_parser(name, help=stage.help, description=stage.help,
                            formatter_class=_LazyEpilogFormatter, add_help=True)
    parser.epilog_factory = help_text  # type: ignore[attr-defined]
    parser.add_argument("--config", help="YAML file of config values")
    parser.add_argument("--output-dir", help="run folder (overrides output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    if name == "demo":
        parser.add_argument("--quick", action="store_true", help="a much smaller run (same as quick=true)")
        parser.add_argument("--seeds", help="training seeds to rerun the DPO family and RL methods on, e.g. 0,1,2 "
                                            "(same as seeds=[0,1,2])")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted for nested fields")
    parser.set_defaults(stage=name)


class _LazyEpilogFormatter(argparse.RawDescriptionHelpFormatter):
    """Builds the field list only when --help is asked (it imports the stage's module)."""


class _Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        factory = getattr(self, "epilog_factory", None)
        if factory is not None and self.epilog is None:
            self.epilog = factory()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlhfkit", description="RLHF end to end: SFT, reward models, PPO, DPO, feedback.")
    sub = parser.add_subparsers(dest="command", metavar="<stage>", parser_class=_Parser)
    for name, stage in _available().items():
        _stage_parser(sub, name, stage)
    try:
        from rlhfkit.feedback.app import cli as label_cli

        label_cli.register(sub)
    except ImportError:
        pass
    try:
        from rlhfkit.serve import cli as serve_cli

        serve_cli.register(sub)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = build_parser()
    # key=value overrides may come before or after the --options
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if args.command is None:
        parser.print_help()
        return 2
    if not hasattr(args, "stage"):
        return int(args.func(args) or 0)  # sub-commands with their own handler (label ...)
    stage = _available()[args.stage]
    module = importlib.import_module(stage.module)
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if getattr(args, "quick", False):
        overrides.append("quick=true")
    if getattr(args, "seeds", None):
        overrides.append(f"seeds=[{args.seeds}]")
    try:
        config = load_config(getattr(module, stage.config), args.config, overrides)
    except ConfigError as err:
        print(f"rlhfkit {args.stage}: config error: {err}", file=sys.stderr)
        return 2
    from rlhfkit.data.records import DataError
    from rlhfkit.feedback.constitution.spec import ConstitutionError

    try:
        result = getattr(module, stage.run)(config, resume=args.resume)
    except (DataError, ConstitutionError, FileNotFoundError) as err:
        print(f"rlhfkit {args.stage}: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:  # raised once the config meets the files it names (a judge template, ...)
        print(f"rlhfkit {args.stage}: config error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
