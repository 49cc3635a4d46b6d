"""twinkle.cli: sources in priority order, key resolution, casting, and the Args helpers; get_logger's ranks."""

from __future__ import annotations

import logging

import pytest

from twinkle.cli import CLI, CLISource, ValueCaster


def test_flags_the_upstream_way():
    args = CLI.from_args(
        ["--model-id", "Qwen/Qwen3.5-4B", "--fsdp-size", "2", "--lr", "1e-4", "--model-name", "twinkle",
         "--use-lora", "--no-gradient-checkpointing", "--batch_size=4", "stray", "--dp-size", "--max-new-tokens",
         "64"],
        environ={},
    )
    assert args.model.model_id == "Qwen/Qwen3.5-4B"
    assert args.infra.fsdp_size == 2 and args.training.batch_size == 4
    assert args.optimizer.learning_rate == pytest.approx(1e-4)  # alias lr
    assert args.lora.use_lora is True and args.model.gradient_checkpointing is False
    assert args.infra.dp_size is True  # a bare flag followed by another flag is True
    assert args.sampling.max_tokens == 64  # alias max_new_tokens
    assert args.extra == {"model_name": "twinkle"}
    assert args.extra.get("model_name", "x") == "twinkle" and args.get("model_name") == "twinkle"


def test_source_priority_dotenv_env_yaml_argv(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("TWINKLE_BATCH_SIZE=2\nMAX_STEPS=7\nlr=0.5\n# comment\n")
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  batch_size: 6\nmodel:\n  model_id: from-yaml\nseed: 9\n")
    environ = {"TWINKLE_BATCH_SIZE": "3", "WORLD_SIZE": "4", "TWINKLE_LR": "0.25"}
    args = CLI.from_args(["--config", str(config), "--lr", "1e-3"], env_file=env_file, environ=environ)
    assert args.training.max_steps == 7  # only the dotenv file sets it
    assert args.infra.world_size == 4  # bare torchrun variable named after a field
    assert args.training.batch_size == 6  # yaml beats env beats dotenv
    assert args.model.model_id == "from-yaml"  # nested keys joined: model_model_id -> group_field
    assert args.training.seed == 9  # seed is shared: goes to training
    assert args.optimizer.learning_rate == pytest.approx(1e-3)  # argv wins
    args = CLI.from_args([], env_file=env_file, environ=environ)
    assert args.training.batch_size == 3 and args.optimizer.learning_rate == pytest.approx(0.25)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        CLI.from_args(["--config", str(tmp_path / "missing.yaml")], environ={})


def test_dotenv_defaults_to_dot_env_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env.local").write_text("SAVE_STEPS=11\n")
    assert CLI.from_args([], environ={}).training.save_steps == 11
    (tmp_path / ".env").write_text("SAVE_STEPS=12\n")
    assert CLI.from_args([], environ={}).training.save_steps == 12


def test_casting_and_upstream_quirks():
    assert ValueCaster.auto("yes") is True and ValueCaster.auto("off") is False and ValueCaster.auto("~") is None
    assert ValueCaster.auto("3") == 3 and ValueCaster.auto("2.5") == 2.5 and ValueCaster.auto("a,b") == ["a", "b"]
    assert ValueCaster.coerce("3.0", 1) == 3 and ValueCaster.coerce("x", 1) == "x"  # failed coercion keeps it
    args = CLI.from_args(["--lora-target-modules", "q_proj,v_proj", "--no-fused-ce", "--use-megatron", "true",
                          "--template-model-id", "t", "--sampling-seed", "5", "--num-gpus", "2"], environ={})
    assert args.lora.lora_target_modules == ["q_proj", "v_proj"]
    assert args.extra["fused_ce"] is False and args.model.enable_fused_ce is True  # the quirk, kept
    assert args.model.strategy == "native_fsdp"
    assert args.template.model_id == "t" and args.sampling.seed == 5 and args.infra.nproc_per_node == 2
    assert args.training.seed == 42


def test_args_helpers():
    args = CLI.from_args(["--model-id", "m", "--lr", "2e-4", "--lora-r", "4"], environ={})
    assert args.get_template_args()["model_id"] == "m"  # the template getter fills model_id from the model
    assert args.get_optimizer_args()["lr"] == pytest.approx(2e-4) and "learning_rate" not in args.get_optimizer_args()
    assert args.get_lora_args() == {"target_modules": "all-linear", "r": 4, "lora_alpha": 32, "lora_dropout": 0.05}
    assert "max_model_len" not in args.get_sampler_args()  # None fields left out
    assert args["batch_size"] == 8 and args.get("nope", 1) == 1
    with pytest.raises(KeyError):
        args["nope"]
    flat = args.to_dict()
    assert flat["lora_r"] == 4 and flat["model_id"] == "m"


def test_cli_source_tokens():
    items = list(CLISource(["pos", "--a", "1", "--b", "--c=x=y", "--no-d", "--e", "--", "f"]).items())
    assert items == [("a", "1"), ("b", True), ("c", "x=y"), ("d", False), ("e", True)]


# ---------------------------------------------------------------------------------------------- get_logger


@pytest.fixture
def fresh_logger():
    from twinkle.utils import logger as module

    module._reset_for_tests()
    yield module
    module._reset_for_tests()


def test_get_logger_logs_on_the_local_master_only(fresh_logger, monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    log = fresh_logger.get_logger()
    assert log.name == "twinkle" and log.propagate is False
    log.info("hidden on rank 1")
    log.info("shown everywhere", ranks="all")
    log.error("errors always")
    err = capsys.readouterr().err
    assert "hidden on rank 1" not in err
    assert "[rank1] shown everywhere" in err and "[ERROR:twinkle] errors always" in err
    fresh_logger._reset_for_tests()
    monkeypatch.setenv("LOCAL_RANK", "0")
    log = fresh_logger.get_logger()
    log.info("master speaks")
    log.warning_once("once", hash_id="k")
    log.warning_once("twice", hash_id="k")
    err = capsys.readouterr().err
    assert "[INFO:twinkle] master speaks" in err and "once" in err and "twice" not in err
    fresh_logger._reset_for_tests()
    monkeypatch.setenv("LOCAL_RANK", "1")
    fresh_logger.get_logger(only_local_master=False).info("all ranks asked")
    assert "all ranks asked" in capsys.readouterr().err


def test_get_logger_file_and_level(fresh_logger, tmp_path, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    path = tmp_path / "run.log"
    log = fresh_logger.get_logger(str(path))
    assert log.level == logging.WARNING
    log.warning("to the file")
    log.info("below the level")
    for h in log.handlers:
        h.flush()
    text = path.read_text()
    assert "to the file" in text and "below the level" not in text
    # a library-internal child name is not a file path
    assert fresh_logger.get_logger("twinkle.model").name == "twinkle.model"
    assert not (tmp_path / "twinkle.model").exists()
