"""runners/compare.py without a peer installed: the peers config group, the KV memory both
engines get, the peer command line and environment, and the error naming `make peers`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from flowprefill.config import PeerConfig, from_hydra, register_configs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runners"))
from peer_servers import Shared, peer_executable, vllm_command, vllm_env  # noqa: E402

PEERS = sorted(p.stem for p in (ROOT / "conf" / "peers").glob("*.yaml"))


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="compare", overrides=list(overrides))


def test_default_peers_and_one_file_per_peer() -> None:
    cfg = _compose()
    assert list(cfg.peers) == ["vllm", "vllm_priority", "vllm_chunk512"]
    peers = {k: from_hydra(PeerConfig, v) for k, v in cfg.peers.items()}
    assert peers["vllm"].args == []
    assert peers["vllm_priority"].args == ["--scheduling-policy", "priority"]
    assert peers["vllm_chunk512"].args == ["--max-num-batched-tokens", "512"]
    assert set(PEERS) >= set(peers)
    assert list(_compose("peers=[vllm_chunk512]").peers) == ["vllm_chunk512"]
    assert "peers" not in _compose("peers=[]") or not _compose("peers=[]").peers
    # the comparison's SLO rule composes into the typed schema
    from flowprefill.config import SLOConfig

    slo = from_hydra(SLOConfig, cfg.slo)
    assert slo.mode == "scaled_by_type" and slo.scaled["text"]["prompt_len"] == 1024
    assert cfg.workload.max_prompt_len + cfg.max_output <= 8192


def test_missing_peer_names_make_peers(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="run `make peers`"):
        peer_executable(PeerConfig(venv=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match="peer kind 'sglang' is unknown"):
        peer_executable(PeerConfig(kind="sglang"))


def test_kv_blocks_match_the_peers_memory() -> None:
    from compare import kv_blocks

    smol = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
            "num_hidden_layers": 30, "head_dim": 64}
    # K and V, 30 layers, 3 heads of 64 floats: 46,080 bytes a token; 2 GiB in 16-token blocks
    assert kv_blocks(smol, 2, 16, "float32") == 2 * 2**30 // (16 * 46080) == 2912
    assert kv_blocks(smol, 2, 16, "bfloat16") == 2 * 2912 + 1


def test_peer_command_and_environment(tmp_path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").write_text("")
    peer = PeerConfig(args=["--scheduling-policy", "priority"], env={"VLLM_X": "1"},
                      venv=str(venv))
    shared = Shared(model_dir=tmp_path / "m", served_name="smol", dtype="float32",
                    max_model_len=8192, kv_cache_gib=2, threads=2)
    cmd = vllm_command(peer, shared, 9999)
    assert cmd[:3] == [str(venv / "bin" / "vllm"), "serve", str(tmp_path / "m")]
    assert cmd[-2:] == ["--scheduling-policy", "priority"]
    for flag, value in (("--served-model-name", "smol"), ("--port", "9999"),
                        ("--dtype", "float32"), ("--max-model-len", "8192")):
        assert cmd[cmd.index(flag) + 1] == value
    env = vllm_env(peer, shared, {"PATH": "/bin"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_X"] == "1"
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["OMP_NUM_THREADS"]) == ("nobind", "2")
    own = vllm_env(peer, Shared(**{**shared.__dict__, "threads": None}), {})
    assert "VLLM_CPU_OMP_THREADS_BIND" not in own  # vLLM's own binding
