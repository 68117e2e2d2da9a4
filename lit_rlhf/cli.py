"""The ``lit-rlhf`` command: ``lit-rlhf fit --config configs/arithmetic/sft.yaml``, ``lit-rlhf evaluate ...``.

``lit-rlhf <command> [options]``; ``lit-rlhf --help`` lists the commands, ``lit-rlhf <command> --help`` their
options. ``python train.py <command> ...`` and ``python -m lit_rlhf <command> ...`` are the same command.

Conventions shared by every command:

- options are snake_case (``--max_new_tokens``), as the Lightning CLI's (``--trainer.max_steps``, ``--ckpt_path``);
- ``fit`` and ``validate`` take ``--config FILE`` and dotted overrides of any key in it;
- a policy, reference or reward model is an HF folder or hub name given by option (``--policy``);
- ``--data_seed`` is the seed of a data split, ``--bootstrap_seed`` the seed of a confidence interval's resampling.

This module imports nothing heavy, so ``lit-rlhf --help`` answers at once; each command loads its own module.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("lit_rlhf.lightning_cli", "train one stage from a YAML config (--config FILE, then dotted overrides)"),
    "validate": ("lit_rlhf.lightning_cli", "run a config's validation on a checkpoint (--ckpt_path) or its model"),
    "evaluate": ("lit_rlhf.evaluate", "exact-match (the gold metric) of a policy on the held-out arithmetic prompts"),
    "winrate": ("lit_rlhf.winrate", "win rate of a policy against a reference, judged by a reward model or an LLM"),
    "label": ("lit_rlhf.data.arithmetic_labels", "label arithmetic preference pairs from a policy's own answers"),
    "demo": ("lit_rlhf.demo", "SFT, reward model and PPO on the arithmetic task, then a results table"),
}
"""``name: (module, one-line summary)``; ``fit`` and ``validate`` are the Lightning CLI, the others ``main(argv)``."""

LIGHTNING_COMMANDS = ("fit", "validate")


def program_name() -> str:
    """How the user called us: ``train.py`` for ``python train.py``, else ``lit-rlhf``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.endswith(".py") and name not in ("__main__.py", "cli.py") else "lit-rlhf"


def usage(prog: str = "lit-rlhf") -> str:
    """The top-level help: one line per command and the conventions."""
    width = max(len(name) for name in (*COMMANDS, "-h, --help"))
    lines = [
        f"usage: {prog} <command> [options]",
        "",
        "RLHF for Hugging Face language models with PyTorch Lightning: SFT, reward models, PPO and GRPO.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}  show this help and exit",
        f"  {'--version':<{width}}  print the lit_rlhf version and exit",
        "",
        f"'{prog} <command> --help' lists a command's options. Options are snake_case (--max_new_tokens);",
        "fit and validate take --config FILE and dotted overrides of its keys (--trainer.max_steps 100).",
        "Examples:",
        f"  {prog} demo",
        f"  {prog} fit --config configs/arithmetic/sft.yaml",
        f"  {prog} evaluate --policy runs/arithmetic/sft/hf",
    ]
    return "\n".join(lines) + "\n"


def cli_main(args: list[str] | dict[str, Any] | None = None, run: bool = True, prog: str | None = None) -> Any:
    """Run ``fit`` / ``validate`` (the Lightning CLI); ``args`` replaces ``sys.argv[1:]`` (for tests and notebooks).

    Returns:
        The :class:`~lit_rlhf.lightning_cli.LitRLHFCLI` (its ``trainer``, ``model`` and ``datamodule``).
    """
    from lit_rlhf.lightning_cli import run_lightning_cli

    return run_lightning_cli(args, run=run, prog=prog)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``lit-rlhf`` entry point: run the command in ``argv`` (``None``: ``sys.argv[1:]``).

    An error the user can fix (:class:`~lit_rlhf.errors.UserError`: a bad option value, data row, model folder or
    checkpoint) is printed as one ``error:`` line, and the process exits with status 2; ``--debug`` anywhere in the
    arguments (or ``LIT_RLHF_DEBUG=1``) shows its traceback instead. Other exceptions keep their traceback.

    Returns ``None`` (the console script exits with ``sys.exit(main())``: 0 on success); :func:`run_command`
    returns the command's results and raises every error.
    """
    from lit_rlhf.errors import DEBUG_ENV, debug_requested

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or debug_requested()
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        if argv is None:  # the Lightning CLI reads sys.argv itself
            sys.argv = [sys.argv[0], *args]
    saved_env = os.environ.get(DEBUG_ENV)
    if debug:  # the parser of fit/validate reads it too (and keeps jsonargparse's full message)
        os.environ[DEBUG_ENV] = "1"
    try:
        run_command(None if argv is None else args)
    except Exception as err:
        user_error = find_user_error(err)
        if debug or user_error is None:
            raise
        message = " ".join(str(user_error).split("\n"))
        sys.stderr.write(f"{program_name()}: error: {message}\n")
        sys.stderr.write("(add --debug or set LIT_RLHF_DEBUG=1 to see where it was raised)\n")
        raise SystemExit(2) from None
    finally:
        if saved_env is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = saved_env


def find_user_error(err: BaseException) -> Any:
    """The :class:`~lit_rlhf.errors.UserError` that ``err`` is or was raised from (jsonargparse wraps the errors of
    the classes it builds in a ``ValueError``), or ``None``."""
    from lit_rlhf.errors import UserError

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run_command(argv: Sequence[str] | None = None) -> Any:
    """Dispatch ``argv`` (``None``: ``sys.argv[1:]``) to its command.

    Returns:
        What the command returns: the CLI object for ``fit``/``validate`` (``trainer``, ``model``, ``datamodule``),
        the results of the others (a dict for ``evaluate``, a ``WinRateResult``, a cache or summary path).
    """
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = program_name()
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage(prog))
        return None
    if argv[0] == "--version":
        from lit_rlhf import __version__

        print(f"lit_rlhf {__version__}")
        return None
    name, rest = argv[0], argv[1:]
    if name in LIGHTNING_COMMANDS:  # LightningCLI reads sys.argv itself (and warns when given a copy of it)
        return cli_main(None if from_sys_argv else [name, *rest], prog=prog)
    if name not in COMMANDS:
        hint = " (the modules define no test or predict step: use validate)" if name in ("test", "predict") else ""
        sys.stderr.write(f"usage: {prog} <command> [options]   ({prog} --help lists the commands)\n")
        sys.stderr.write(f"{prog}: error: unknown command {name!r}{hint}; choose from {', '.join(COMMANDS)}\n")
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"{prog} {name}")


# Parsers of the commands other than fit/validate: snake_case options, help on every one, other spellings hidden.


class CommandParser(argparse.ArgumentParser):
    """``ArgumentParser`` for ``lit-rlhf`` commands: no abbreviations, hidden aliases, required options with aliases.

    :meth:`add_option` adds an option under its snake_case name and, hidden from ``--help``, its other accepted
    spellings (e.g. ``--num-val`` for ``--num_val``).
    """

    def __init__(self, prog: str, description: str, epilog: str | None = None) -> None:
        super().__init__(
            prog=prog,
            description=description.replace("``", ""),
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        self._required: list[tuple[str, str]] = []
        self._shown_required: list[argparse.Action] = []
        self.add_argument("--seed", action=_AmbiguousSeed, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add_option(self, name: str, *aliases: str, group: Any = None, **kwargs: Any) -> argparse.Action:
        """Add ``name`` (``--snake_case``) and its hidden ``aliases`` to ``group`` (default: the parser).

        ``required=True`` is checked after parsing, so that an alias satisfies it too.
        """
        target = group if group is not None else self
        required = kwargs.pop("required", False)
        action = target.add_argument(name, required=required and not aliases, **kwargs)
        if required and aliases:
            self.require_after_parsing(action)
        alias_kwargs = {k: v for k, v in kwargs.items() if k not in ("help", "default", "metavar")}
        for alias in aliases:
            target.add_argument(
                alias, dest=action.dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **alias_kwargs
            )
        return action

    def require_after_parsing(self, action: argparse.Action) -> None:
        """Check ``action`` after parsing (an alias may set it) while ``--help`` still shows it as required."""
        self._required.append((action.option_strings[0], action.dest))
        self._shown_required.append(action)

    def format_usage(self) -> str:
        with self._showing_required():
            return super().format_usage()

    def format_help(self) -> str:
        with self._showing_required():
            return super().format_help()

    @contextlib.contextmanager
    def _showing_required(self) -> Iterator[None]:
        for action in self._shown_required:
            action.required = True
        try:
            yield
        finally:
            for action in self._shown_required:
                action.required = False

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        positional = vars(parsed).pop("policy_positional", None)
        if positional is not None:  # the positional form ``lit-rlhf evaluate PATH`` (see add_policy_option)
            if parsed.policy is not None and parsed.policy != positional:
                self.error(f"two policies given: --policy {parsed.policy} and {positional}")
            parsed.policy = positional
        missing = [name for name, dest in self._required if getattr(parsed, dest, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return parsed


class _AmbiguousSeed(argparse.Action):
    """``--seed`` names no seed of these commands: say which two there are."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        parser.error(
            "--seed is ambiguous: use --data_seed (the seed of the data split) or --bootstrap_seed (the seed of the "
            "bootstrap confidence interval, lit-rlhf winrate)"
        )


def add_policy_option(parser: CommandParser, help: str, positional_alias: bool = False) -> None:
    """``--policy PATH`` (required), the one form of the policy argument in every command.

    With ``positional_alias``, a bare path (the positional form ``lit-rlhf evaluate PATH``) is accepted too, hidden.
    """
    action = parser.add_option("--policy", required=not positional_alias, metavar="PATH", default=None, help=help)
    if positional_alias:
        parser.add_argument("policy_positional", nargs="?", default=None, help=argparse.SUPPRESS)
        parser.require_after_parsing(action)


def parse_tristate(value: str) -> bool | None:
    """``true`` / ``false`` / ``auto`` (``None``: decide from the model), as ``--use_chat_template`` takes."""
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    if lowered in ("auto", "none", "null"):
        return None
    raise argparse.ArgumentTypeError(f"expected true, false or auto, got {value!r}")


def add_tristate_option(parser: CommandParser, name: str, old_name: str, help: str) -> None:
    """``--name true|false|auto`` (default ``auto``) and, hidden, the ``--old-name`` / ``--no-old-name`` switches."""
    action = parser.add_option(name, type=parse_tristate, default=None, metavar="{true,false,auto}", help=help)
    for switch, value in ((f"--{old_name}", True), (f"--no-{old_name}", False)):
        hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        parser.add_argument(switch, dest=action.dest, action="store_const", const=value, **hidden)


if __name__ == "__main__":
    main()
