import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from common.config import Config, ConfigError, iter_fields, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_match_luffy_paper():
    cfg = load_config(environ={})
    algo = cfg.algorithm
    assert (algo.n_on, algo.n_off, algo.gamma, algo.clip, algo.entropy_coef) == (
        7,
        1,
        0.1,
        False,
        0.001,
    )
    assert (algo.std_normalize, algo.loss_agg, algo.shaping) == (False, "token_sum_norm", True)
    assert (cfg.learner.betas, cfg.learner.weight_decay, cfg.learner.grad_clip) == (
        (0.9, 0.999),
        0.01,
        1.0,
    )


def test_precedence_file_then_env_then_cli(tmp_path):
    path = write(tmp_path, '[learner]\nlr = 0.1\nmax_steps = 7\n[run]\nname = "fromfile"\n')
    env = {"LUFFY_LEARNER__LR": "0.2", "LUFFY_RUN__NAME": "fromenv"}
    cfg = load_config(path, ["--learner.lr", "0.3"], environ=env)
    assert cfg.learner.lr == 0.3
    assert cfg.learner.max_steps == 7
    assert cfg.run.name == "fromenv"
    assert load_config(path, environ=env).learner.lr == 0.2
    assert load_config(path, environ={}).learner.lr == 0.1


def test_cli_equals_form_json_lists_and_none():
    cfg = load_config(
        overrides=[
            "--learner.betas=[0.8, 0.9]",
            "--algorithm.prefix_linear_max_ratio",
            "0.8",
            "--learner.train_file",
            "none",
        ],
        environ={},
    )
    assert cfg.learner.betas == (0.8, 0.9)
    assert cfg.algorithm.prefix_linear_max_ratio == 0.8
    assert cfg.learner.train_file is None


def test_config_path_from_env(tmp_path):
    path = write(tmp_path, "[learner]\nmax_steps = 3\n")
    assert load_config(environ={"LUFFY_CONFIG": str(path)}).learner.max_steps == 3


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("file", "unknown config key 'learner.lrr' (from file"),
        ("env", "unknown config key 'learner.lrr' (from env LUFFY_LEARNER__LRR)"),
        ("cli", "unknown config key 'learner.lrr' (from CLI --learner.lrr)"),
    ],
)
def test_unknown_keys_are_named_with_their_source(tmp_path, kind, expected):
    path = write(tmp_path, "[learner]\nlrr = 1\n") if kind == "file" else None
    env = {"LUFFY_LEARNER__LRR": "1"} if kind == "env" else {}
    cli = ["--learner.lrr", "1"] if kind == "cli" else []
    with pytest.raises(ConfigError) as err:
        load_config(path, cli, environ=env)
    assert expected in str(err.value)
    assert "did you mean 'learner.lr'" in str(err.value)


def test_unknown_section_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lerner'"):
        load_config(write(tmp_path, "[lerner]\nlr = 1\n"), environ={})
    with pytest.raises(ConfigError, match=r"invalid value for 'learner.lr' \(from CLI"):
        load_config(overrides=["--learner.lr", "-1"], environ={})
    with pytest.raises(ConfigError, match=r"algorithm\.mode"):
        load_config(overrides=["--algorithm.mode", "ppo"], environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[learner\n"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="has no value"):
        load_config(overrides=["--learner.lr"], environ={})
    with pytest.raises(ConfigError, match=r"--section\.key"):
        load_config(overrides=["--lr", "1"], environ={})


def test_every_field_is_documented():
    undocumented = [name for name, field in iter_fields(Config) if not field.description]
    assert undocumented == []
    assert len(list(iter_fields(Config))) > 60


def test_every_config_file_in_the_repo_parses(tmp_path):
    files = sorted(REPO.glob("configs/**/*.toml")) + sorted(REPO.glob("deploy/**/*.toml"))
    assert len(files) >= 2
    for k, path in enumerate(files):
        text = path.read_text()
        if 'extends = "/app/configs/' in text:  # a Kubernetes run config: the image's configs/
            path = tmp_path / f"{k}.toml"
            path.write_text(text.replace('"/app/configs/', f'"{REPO}/configs/'))
        load_config(path, environ={})


def test_printed_config_round_trips(tmp_path):
    cfg = load_config(overrides=["--learner.lr", "0.5", "--services.token", "s3cret"], environ={})
    text = tomli_w.dumps(cfg.to_toml_dict())
    assert "s3cret" not in text  # secrets are masked when printed or written
    again = Config.model_validate(tomllib.loads(text))
    assert again.learner == cfg.learner
    assert again.algorithm == cfg.algorithm


def test_replicas_writing_their_resolved_config_at_once_all_succeed(tmp_path):
    # two replicas of a role start together and write config.<role>.json into one run folder;
    # a shared temporary file name made one of them crash at start (its rename found nothing)
    import threading

    from common.config import write_resolved

    cfg = load_config(environ={})
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(50):
                write_resolved(cfg, tmp_path, "generator")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads((tmp_path / "config.generator.json").read_text())["run"]["name"]
    assert [p.name for p in tmp_path.iterdir()] == ["config.generator.json"]


def test_a_config_extends_a_base_and_a_cycle_is_refused(tmp_path):
    (tmp_path / "base.toml").write_text("[learner]\nlr = 0.1\nmax_steps = 7\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[learner]\nlr = 0.2\n')
    cfg = load_config(tmp_path / "child.toml", environ={})
    assert (cfg.learner.lr, cfg.learner.max_steps) == (0.2, 7)
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.toml", environ={})
    (tmp_path / "lost.toml").write_text('extends = "gone.toml"\n')
    with pytest.raises(ConfigError, match=r"gone\.toml' does not exist"):
        load_config(tmp_path / "lost.toml", environ={})


def test_the_baseline_configs_run_luffys_recipes():
    def cfg(name):
        return load_config(REPO / "configs" / f"qwen-7b-{name}.toml", environ={})

    luffy, grpo, rl_sft, sft, sft_rl = (cfg(n) for n in ("gpu", "grpo", "rl-sft", "sft", "sft-rl"))
    a = luffy.algorithm  # 8 samples, one the trace, shaping 0.1, no clip, LUFFY's scale
    assert (a.mode, a.n_on + a.n_off, a.n_off, a.gamma, a.clip) == ("luffy", 8, 1, 0.1, False)
    assert (a.loss_agg, a.luffy_ranks, a.max_response_len, a.entropy_coef) == (
        "luffy", 8, 8192, 0.001,
    )  # fmt: skip
    assert (luffy.learner.batch_prompts, luffy.learner.micro_batch_tokens) == (64, 32768)
    g = grpo.algorithm  # 8 on-policy samples, PPO clip 0.2 against the behaviour policy
    assert (g.mode, g.n_on, g.n_off, g.clip, g.clip_eps, g.decoupled) == (
        "grpo", 8, 0, True, 0.2, False,
    )  # fmt: skip
    r = rl_sft.algorithm
    assert (r.mode, r.advantage, r.sft_coef, r.n_off) == ("rl_sft", "grpo_split", 1.0, 1)
    s, sl = sft.algorithm, sft.learner
    assert (s.mode, s.loss_agg, s.entropy_coef) == ("sft", "token_mean", 0.0)
    assert (sl.lr, sl.warmup_ratio, sl.max_epochs, sl.batch_prompts) == (5e-5, 0.1, 3, 64)
    assert sft_rl.algorithm == grpo.algorithm
    assert sft_rl.learner.train_file.name == "openr1.complement.parquet"
    assert sft_rl.model.path != luffy.model.path


def test_scheduling_defaults_to_the_engines_mode_and_refuses_what_it_cannot_run():
    assert load_config(environ={}).generator.scheduling == "continuous"  # vllm
    hf = ["--generator.engine", "hf"]
    assert load_config(overrides=hf, environ={}).generator.scheduling == "batch"
    batch = ["--generator.scheduling", "batch"]
    assert load_config(overrides=batch, environ={}).generator.scheduling == "batch"
    with pytest.raises(ConfigError, match=r"'continuous' needs generator\.engine = 'vllm'"):
        load_config(overrides=[*hf, "--generator.scheduling", "continuous"], environ={})
