"""Sample tables reach every logger that shows tables (TensorBoard, W&B, MLflow, real and offline) and samples.jsonl."""

from __future__ import annotations

import glob
import json
import os
import re

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import SFTModule
from lit_rlhf.tables import SAMPLES_FILE, log_table, markdown_table, read_jsonl, run_folder
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import read_events

COLUMNS = ("prompt", "response", "reward")
ROWS = [("2 + 3 =", "5", 1.0), ("a | b\nc", "x", -0.25)]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline in ``tmp_path`` (no network, no git or code capture, no system stats); MLflow's file store."""
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_INIT_TIMEOUT": "120",
        "WANDB_DIR": str(tmp_path / "wandb_home"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_home" / "cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_home" / "config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_home" / "data"),
        "WANDB_ARTIFACT_DIR": str(tmp_path / "wandb_home" / "artifacts"),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # mlflow >= 3.7 asks for this to use a local folder without a database
    }.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "wandb_home").mkdir()
    yield
    import wandb

    wandb.finish()


def every_logger(tmp_path):
    """TensorBoard first (so the run folder is its version folder), then W&B, MLflow and CSV."""
    return [
        TensorBoardLogger(str(tmp_path), name="tb", version="run"),
        WandbLogger(save_dir=str(tmp_path), project="tables", offline=True),
        MLFlowLogger(experiment_name="tables", tracking_uri=f"file:{tmp_path / 'mlruns'}"),
        CSVLogger(str(tmp_path), name="csv", version="run"),
    ]


def wandb_tables(logger: WandbLogger, tag: str) -> list[dict]:
    """The tables W&B wrote for ``tag`` (``{"columns": [...], "data": [[...]]}``), in the order they were logged."""
    folder = os.path.join(logger.experiment.dir, "media", "table", os.path.dirname(tag))
    name = re.compile(re.escape(os.path.basename(tag)) + r"_(\d+)_\w+\.table\.json")
    found = sorted((int(m.group(1)), m.string) for m in map(name.fullmatch, os.listdir(folder)) if m)
    return [json.load(open(os.path.join(folder, file))) for _, file in found]


def mlflow_table(logger: MLFlowLogger, tag: str):
    return logger.experiment.load_table(logger.experiment_id, f"{tag}.json", run_ids=[logger.run_id])


def test_markdown_table_escapes_pipes_and_newlines_and_cuts_long_cells():
    text = markdown_table(("a", "b"), [("x|y\nz", 0.123456), ("w" * 10, 2)], max_cell=6)
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y ⏎ z | 0.1235 |", "| wwwww… | 2 |"]


def test_one_call_reaches_every_logger_and_the_jsonl(tmp_path, offline):
    tb, wb, mlf, csv = loggers = every_logger(tmp_path)
    log_table(loggers, "samples/val", COLUMNS, ROWS, step=3, headline="reward 0.375")
    log_table(loggers, "samples/val", COLUMNS, ROWS[:1], step=5)
    log_table(loggers, "samples/val_pairs", ("prompt", "chosen"), [("p", "c")], step=5)

    # TensorBoard: a markdown table per call, the headline above the first.
    _, texts = read_events(tb.log_dir)
    first, second = texts["samples/val/text_summary"]
    assert first.startswith("reward 0.375\n\n| prompt | response | reward |")
    assert "| a \\| b ⏎ c | x | -0.25 |" in first
    assert second == "| prompt | response | reward |\n|---|---|---|\n| 2 + 3 = | 5 | 1 |"

    # W&B: one wandb.Table per call, with the values as given (not formatted).
    tables = wandb_tables(wb, "samples/val")
    assert [t["columns"] for t in tables] == [list(COLUMNS)] * 2
    assert [t["data"] for t in tables] == [[list(r) for r in ROWS], [list(ROWS[0])]]
    assert wandb_tables(wb, "samples/val_pairs")[0]["data"] == [["p", "c"]]

    # MLflow: one table artifact per tag, appended to, with a step column.
    table = mlflow_table(mlf, "samples/val")
    assert table["step"].tolist() == [3, 3, 5]
    assert table["prompt"].tolist() == ["2 + 3 =", "a | b\nc", "2 + 3 ="]
    assert table["reward"].tolist() == [1.0, -0.25, 1.0]
    assert mlflow_table(mlf, "samples/val_pairs")["chosen"].tolist() == ["c"]

    # samples.jsonl in the first logger's run folder (TensorBoard's version folder), none elsewhere.
    path = os.path.join(tb.log_dir, SAMPLES_FILE)
    assert read_jsonl(path, "samples/val") == [
        {"tag": "samples/val", "step": 3, "prompt": "2 + 3 =", "response": "5", "reward": 1.0},
        {"tag": "samples/val", "step": 3, "prompt": "a | b\nc", "response": "x", "reward": -0.25},
        {"tag": "samples/val", "step": 5, "prompt": "2 + 3 =", "response": "5", "reward": 1.0},
    ]
    pairs = read_jsonl(path, "samples/val_pairs")
    assert pairs == [{"tag": "samples/val_pairs", "step": 5, "prompt": "p", "chosen": "c"}]
    assert sorted(glob.glob(str(tmp_path / "**" / SAMPLES_FILE), recursive=True)) == [path]
    assert not os.path.exists(os.path.join(csv.log_dir, SAMPLES_FILE))

    # The run folder of each kind of logger when it comes first.
    assert run_folder([csv, tb]) == csv.log_dir
    assert run_folder([wb, tb]) == wb.experiment.dir and wb.experiment.dir.startswith(str(tmp_path))
    artifacts = run_folder([mlf, tb])  # MLflow's artifact folder of the run, where its table artifacts are
    assert artifacts.startswith(str(tmp_path / "mlruns"))
    assert os.path.isfile(os.path.join(artifacts, "samples", "val.json"))
    assert run_folder([]) is None


def test_jsonl_appends_across_a_resume_and_can_be_placed_or_skipped(tmp_path):
    for step in (2, 4):  # a new logger on the same version folder, as after a resume
        log_table([TensorBoardLogger(str(tmp_path), name="", version="run")], "samples/val", ("a",), [(step,)], step)
    assert [r["step"] for r in read_jsonl(str(tmp_path / "run" / SAMPLES_FILE))] == [2, 4]

    log_table([], "samples/val", ("a",), [("x",)], 0)  # no logger (logger=False): no run folder, no file
    log_table([], "samples/val", ("a",), [(float("nan"),)], 1, run_dir=str(tmp_path / "elsewhere"))
    assert read_jsonl(str(tmp_path / "elsewhere" / SAMPLES_FILE)) == [{"tag": "samples/val", "step": 1, "a": None}]
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "run"]


def test_bad_tables_raise_and_a_failing_logger_only_warns(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        log_table([], "t", ("step", "a"), [(1, 2)], 0)
    with pytest.raises(ValueError, match="needs 2 cells"):
        log_table([], "t", ("a", "b"), [(1,)], 0)

    class Broken(Logger):  # a logger whose backend is down
        name, version = "broken", "0"

        @property
        def experiment(self):
            raise ConnectionError("tracking server unreachable")

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    csv = CSVLogger(str(tmp_path), name="", version="run")
    with pytest.warns(UserWarning, match="not logged to Broken.*tracking server unreachable"):
        log_table([Broken(), csv], "t", ("a",), [("x",)], 0)
    assert read_jsonl(os.path.join(csv.log_dir, SAMPLES_FILE)) == [{"tag": "t", "step": 0, "a": "x"}]


def test_only_global_rank_zero_writes(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    tb = TensorBoardLogger(str(tmp_path), name="", version="run")
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as in the other processes of a data-parallel run
    log_table([tb], "samples/val", ("a",), [("x",)], 0)
    assert not os.path.exists(os.path.join(tb.log_dir, SAMPLES_FILE))
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    log_table([tb], "samples/val", ("a",), [("x",)], 0)
    assert len(read_jsonl(os.path.join(tb.log_dir, SAMPLES_FILE))) == 1


def test_sft_fit_sends_its_samples_to_every_logger(tmp_path, offline):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, max_new_tokens=6, num_logged_samples=3)
    data = ArithmeticDataModule(num_train=64, num_val=8, batch_size=8)
    tb, wb, mlf, csv = loggers = every_logger(tmp_path)
    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=1,  # the sanity check logs no table
        logger=loggers,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, data)

    columns = ["prompt", "generated", "reference", "exact_match", "graded_score"]
    scalars, texts = read_events(tb.log_dir)
    assert len(texts["samples/val/text_summary"]) == 2
    # Each table sits at the step of its validation's scalars (validations after steps 2 and 4: logged at 1 and 3).
    assert [s for s, _ in scalars["val/exact_match"]] == [1, 3]
    header = "| prompt | generated | reference | exact_match | graded_score |"
    assert all(t.startswith(header) for t in texts["samples/val/text_summary"])
    tables = wandb_tables(wb, "samples/val")
    assert [t["columns"] for t in tables] == [columns] * 2 and all(len(t["data"]) == 3 for t in tables)
    table = mlflow_table(mlf, "samples/val")
    assert table["step"].tolist() == [1] * 3 + [3] * 3 and list(table.columns) == ["step", *columns]
    rows = read_jsonl(os.path.join(trainer.log_dir, SAMPLES_FILE))
    assert [(r["tag"], r["step"]) for r in rows] == [("samples/val", 1)] * 3 + [("samples/val", 3)] * 3
    assert rows[0]["prompt"] == data.val_dataset[0]["row"]["prompt"] and rows[0]["exact_match"] in (0.0, 1.0)
    assert [r[c] for r in rows[3:] for c in columns] == [v for t in tables[1:] for row in t["data"] for v in row]
    assert os.path.isfile(os.path.join(csv.log_dir, "metrics.csv"))  # CSV logs the scalars, no table


def test_loggers_added_on_the_command_line_beside_the_configs_tensorboard(tmp_path, offline):
    from lit_rlhf.cli import cli_main
    from tests.helpers import tiny_cli_args

    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "arithmetic", "sft.yaml")
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    args = tiny_cli_args(config, run_dir, max_steps=3)
    args += ["--trainer.logger+=lightning.pytorch.loggers.WandbLogger", "--trainer.logger.init_args.offline=true"]
    args += ["--trainer.logger.init_args.project=lit-rlhf", f"--trainer.logger.init_args.save_dir={run_dir}"]
    args += ["--trainer.logger+=lightning.pytorch.loggers.MLFlowLogger"]
    args += ["--trainer.logger.init_args.experiment_name=arithmetic"]
    args += [f"--trainer.logger.init_args.tracking_uri=file:{tmp_path / 'runs' / 'mlruns'}"]
    cli = cli_main(args)

    tb, wb, mlf = cli.trainer.loggers
    assert isinstance(tb, TensorBoardLogger) and cli.trainer.log_dir == run_dir  # the run folder stays the config's
    assert os.path.isfile(os.path.join(run_dir, "hf", "model.safetensors"))
    assert {r["step"] for r in read_jsonl(os.path.join(run_dir, SAMPLES_FILE), "samples/val")} == {2}
    assert wb.experiment.dir.startswith(os.path.join(run_dir, "wandb"))
    assert len(wandb_tables(wb, "samples/val")) == 1
    assert set(mlflow_table(mlf, "samples/val")["step"]) == {2}
