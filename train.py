"""``python train.py <command> ...`` is the ``lit-rlhf`` command, e.g. ``python train.py fit --config FILE``.

``python train.py --help`` lists the commands (fit, validate, evaluate, winrate, label, demo).
"""

from lit_rlhf.cli import main

if __name__ == "__main__":
    main()
