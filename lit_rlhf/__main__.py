"""``python -m lit_rlhf <command> ...``: the ``lit-rlhf`` command (``python -m lit_rlhf --help``)."""

from lit_rlhf.cli import main

if __name__ == "__main__":
    main()
