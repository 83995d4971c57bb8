"""scripts/convert_chatglm.py: tiny random ChatGLM2/ChatGLM3 checkpoints (ChatGLM's weight names and shapes from the
real config_tiny.json, written here without THUDM's code) become native GlmForCausalLM folders.

The numerical equivalence with THUDM's remote code is benchmarks/check_chatglm_conversion.py (it needs an old
transformers in a separate venv); these tests check where every weight lands, the tokenizer and chat prompts
against sentencepiece and ChatGLM's own construction, generation and the refusals.
"""

import json

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from tokenizers import normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GlmConfig, GlmForCausalLM

import convert_chatglm
from convert_chatglm import ConversionError, convert
from helpers import MODELS, make_checkpoint
from zhtrain.chat.format import ChatFormat, ChatFormatError

pytestmark = pytest.mark.skipif(
    not (MODELS / "chatglm2" / "tokenizer.model").is_file(),
    reason=f"{MODELS} (THUDM's ChatGLM tokenizer.model and configs) is not there; CI has it next to the repository",
)

GMASK, SOP, EOS = 64790, 64792, 2
SYSTEM, USER, ASSISTANT, OBSERVATION = 64794, 64795, 64796, 64797


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{family: (source weights, native folder)}: ChatGLM2 from float32 safetensors, ChatGLM3 from float16 .bin shards."""
    root = tmp_path_factory.mktemp("chatglm")
    out = {}
    for family, layout, dtype in (
        ("chatglm2", "safetensors", torch.float32),
        ("chatglm3", "bin-index", torch.float16),
    ):
        weights = make_checkpoint(root / family, family, layout, dtype=dtype)
        out[family] = (weights, convert(root / family, root / f"{family}-native"))
    return out


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(MODELS / "chatglm2" / "tokenizer.model"))


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_converted_folder_loads_as_native_glm(converted, family):
    _, native = converted[family]
    model = AutoModelForCausalLM.from_pretrained(native, trust_remote_code=False)
    assert type(model) is GlmForCausalLM
    config = model.config
    wanted = {"model_type": "glm", "vocab_size": 65024, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
    assert {k: getattr(config, k) for k in wanted} == wanted
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    assert config.attention_bias and not config.tie_word_embeddings
    assert (config.max_position_embeddings, config.rms_norm_eps, config.pad_token_id) == (1024, 1e-5, 0)
    assert config.dtype == (torch.float32 if family == "chatglm2" else torch.float16)  # the checkpoint's dtype kept
    assert not any(p.name.endswith(".py") for p in native.iterdir())  # no remote code travels along
    assert json.loads((native / "config.json").read_text())["architectures"] == ["GlmForCausalLM"]


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_every_weight_lands_where_glm_reads_it(converted, family):
    source, native = converted[family]
    state = load_file(str(native / "model.safetensors"))
    q_rows, kv_rows = 4 * 16, 2 * 16
    expected = {
        "model.embed_tokens.weight": source["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": source["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": source["transformer.output_layer.weight"],
    }
    for n in range(2):
        old, new = f"transformer.encoder.layers.{n}.", f"model.layers.{n}."
        qkv, bias = (
            source[old + "self_attention.query_key_value.weight"],
            source[old + "self_attention.query_key_value.bias"],
        )
        expected |= {
            new + "input_layernorm.weight": source[old + "input_layernorm.weight"],
            new + "post_attention_layernorm.weight": source[old + "post_attention_layernorm.weight"],
            new + "self_attn.q_proj.weight": qkv[:q_rows],
            new + "self_attn.k_proj.weight": qkv[q_rows : q_rows + kv_rows],
            new + "self_attn.v_proj.weight": qkv[q_rows + kv_rows :],
            new + "self_attn.q_proj.bias": bias[:q_rows],
            new + "self_attn.k_proj.bias": bias[q_rows : q_rows + kv_rows],
            new + "self_attn.v_proj.bias": bias[q_rows + kv_rows :],
            new + "self_attn.o_proj.weight": source[old + "self_attention.dense.weight"],
            new + "mlp.gate_up_proj.weight": source[old + "mlp.dense_h_to_4h.weight"],
            new + "mlp.down_proj.weight": source[old + "mlp.dense_4h_to_h.weight"],
        }
    assert sorted(state) == sorted(expected)  # nothing else (the rotary inv_freq is recomputed, not carried)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    # from_pretrained keeps them as they are (nothing re-initialised, e.g. the padding row of the embedding)
    model = AutoModelForCausalLM.from_pretrained(native)
    for name, param in model.state_dict().items():
        assert torch.equal(param, expected[name]), name


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_generate_runs_and_stops_at_chatglms_stop_ids(converted, family):
    _, native = converted[family]
    model = AutoModelForCausalLM.from_pretrained(native, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(native)
    prompt = tokenizer(["你好", "请写一首关于春天的诗"], return_tensors="pt", padding=True)
    assert prompt["input_ids"][1, :2].tolist() == [GMASK, SOP] and prompt["attention_mask"][0, 0] == 0  # left pad
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False, eos_token_id=[12345])
    assert out.shape == (2, prompt["input_ids"].shape[1] + 4)
    # Make the model answer the family's last stop id at once: residual stream = embedding, whose first dimension
    # alone reaches lm_head, where only that id's row reads it.
    stop = {"chatglm2": EOS, "chatglm3": OBSERVATION}[family]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[stop, 0] = 10.0
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out[:, prompt["input_ids"].shape[1] :].tolist() == [[stop], [stop]]


def test_generation_config_has_chatglms_stop_ids(converted):
    chatglm2 = GenerationConfig.from_pretrained(converted["chatglm2"][1])
    chatglm3 = GenerationConfig.from_pretrained(converted["chatglm3"][1])
    assert (chatglm2.eos_token_id, chatglm2.pad_token_id) == ([EOS], 0)
    assert (chatglm3.eos_token_id, chatglm3.pad_token_id) == ([EOS, USER, OBSERVATION], 0)


TEXTS = [
    "你好",
    "类型#上衣*材质#牛仔布*颜色#白色*风格#简约",
    "Hello, World! 3.14159 and 1234567890",
    "  two leading spaces and trailing  ",
    " ",
    "first line\n\nthird line\n",
    "\ttab\r\nwindows",
    "emoji 😀🎉 and rare 𠀀𪚥",
    "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ",
    "sop and eop are words here",
]


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_tokenizer_ids_equal_sentencepiece(converted, family, sp):
    tokenizer = AutoTokenizer.from_pretrained(converted[family][1])
    assert tokenizer.is_fast and tokenizer.bos_token_id is None
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (EOS, 0, 0)
    specials = ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"]
    if family == "chatglm3":
        specials += ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == list(range(64789, 64789 + len(specials)))
    if family == "chatglm2":
        assert tokenizer("<|user|>", add_special_tokens=False)["input_ids"] == sp.encode("<|user|>")
    for text in TEXTS:
        ids = sp.encode(text)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tokenizer(text)["input_ids"] == [GMASK, SOP, *ids], text  # as ChatGLM's tokenizer(text)
        assert tokenizer.decode(ids) == sp.decode(ids) == text


def test_chatglm2_conversation_is_ptuning_mains(converted, sp):
    tokenizer = AutoTokenizer.from_pretrained(converted["chatglm2"][1])
    chat = ChatFormat(tokenizer)
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好，有什么可以帮你？"},
        {"role": "user", "content": "推荐一件白色的上衣"},
        {"role": "assistant", "content": "简约的白色牛仔上衣。"},
    ]
    prompt = "[Round 1]\n\n问：你好\n\n答：你好，有什么可以帮你？\n\n[Round 2]\n\n问：推荐一件白色的上衣\n\n答："
    native_prompt = [GMASK, SOP, *sp.encode(prompt)]
    native_answer = [*sp.encode("简约的白色牛仔上衣。"), EOS]
    encoded = chat.encode(messages, False, 10**6, 10**6)
    assert encoded.input_ids == native_prompt + native_answer
    assert encoded.labels == [-100] * len(native_prompt) + native_answer
    assert chat.stop_ids == [EOS]
    with pytest.raises(ChatFormatError, match="ChatGLM2 has no system prompt"):
        chat.encode([{"role": "system", "content": "你是助手"}, *messages], False, 10**6, 10**6)


def test_chatglm3_conversation_is_finetune_hfs(converted, sp):
    tokenizer = AutoTokenizer.from_pretrained(converted["chatglm3"][1])
    chat = ChatFormat(tokenizer)
    messages = [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "用一句话介绍北京。"},
        {"role": "assistant", "content": "北京是中国的首都。"},
    ]
    role = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
    pieces = [[role[m["role"]], *sp.encode("\n"), *sp.encode(m["content"])] for m in messages]
    ids, learned = [GMASK, SOP], [False, False]
    for message, piece in zip(messages, pieces):  # finetune_hf.py's process_batch
        ids += piece
        learned += [message["role"] == "assistant"] * len(piece)
    ids.append(EOS)
    labels = [i if keep else -100 for i, keep in zip(ids, [False, *learned])]  # shifted: learns what follows
    encoded = chat.encode(messages, True, 10**6, 10**6)
    assert encoded.input_ids == ids
    assert encoded.labels == labels
    # the generation prompt is build_chat_input's: the conversation so far, then <|assistant|>
    prompt = tokenizer.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)
    chat_input = [GMASK, SOP, *(i for piece in pieces[:4] for i in piece), ASSISTANT]
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == chat_input
    assert chat.stop_ids == [EOS, USER]


def test_converted_folder_reloads_after_save_pretrained(converted, tmp_path):
    _, native = converted["chatglm3"]
    model = AutoModelForCausalLM.from_pretrained(native, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(native)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokenizer_again = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("你好，世界")["input_ids"]
    assert tokenizer_again("你好，世界")["input_ids"] == ids
    assert tokenizer_again.chat_template == tokenizer.chat_template
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([ids])).logits, again(torch.tensor([ids])).logits)
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == [EOS, USER, OBSERVATION]


def test_cli_casts_and_shards(tmp_path):
    source = make_checkpoint(tmp_path / "src", "chatglm2")
    convert_chatglm.main(
        [str(tmp_path / "src"), str(tmp_path / "out"), "--dtype", "bfloat16", "--max_shard_size", "10MB"]
    )
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.lm_head.weight, source["transformer.output_layer.weight"].to(torch.bfloat16))


def test_split_qkv_without_multi_query_attention():
    """Without multi-query attention ChatGLM's fused rows are, per head, that head's q, k and v rows."""
    config = GlmConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, head_dim=3)
    fused = torch.arange(2 * 3 * 3 * 8, dtype=torch.float32).reshape(18, 8)
    q, k, v = convert_chatglm.split_qkv(fused, config, "test")
    assert torch.equal(q, torch.cat([fused[0:3], fused[9:12]]))
    assert torch.equal(k, torch.cat([fused[3:6], fused[12:15]]))
    assert torch.equal(v, torch.cat([fused[6:9], fused[15:18]]))
    bias_q, _, bias_v = convert_chatglm.split_qkv(torch.arange(18.0), config, "test")
    assert bias_q.tolist() == [0, 1, 2, 9, 10, 11] and bias_v.tolist() == [6, 7, 8, 15, 16, 17]


def test_rope_ratio_follows_each_family():
    """ChatGLM3 (and GLM-4) multiply the RoPE base by rope_ratio; ChatGLM2-32k divides the positions by it."""
    assert convert_chatglm.rope_parameters({"rope_ratio": 50}, "chatglm3") == {
        "rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5,
    }  # fmt: skip
    assert convert_chatglm.rope_parameters({"rope_ratio": 16}, "chatglm2") == {
        "rope_type": "linear", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "factor": 16.0,
    }  # fmt: skip
    code_dividing = "seq_idx = torch.arange(seq_len, dtype=dtype, device=device) / self.rope_ratio"
    with pytest.raises(ConversionError, match="rope_ratio=50.*does not apply it as chatglm3 does"):
        convert_chatglm.rope_parameters({"rope_ratio": 50}, "chatglm3", code_dividing)
    assert convert_chatglm.rope_parameters({"rope_ratio": 16}, "chatglm2", code_dividing)["factor"] == 16.0


# ---------------------------------------------------------------------------------------------------------------
# Refusals


def test_refuses_chatglm_6b_v1(tmp_path):
    make_checkpoint(tmp_path / "src", "chatglm2")
    v1 = {"model_type": "chatglm", "position_encoding_2d": True, "vocab_size": 130528, "inner_hidden_size": 16384}
    (tmp_path / "src" / "config.json").write_text(json.dumps(v1))
    with pytest.raises(ConversionError, match="ChatGLM-6B \\(the first version.*2D positions"):
        convert(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_glm4_remote_code_and_points_to_the_native_release(tmp_path):
    (tmp_path / "glm4").mkdir()
    glm4 = {"model_type": "chatglm", "padded_vocab_size": 151552, "num_layers": 40, "rope_ratio": 500}
    (tmp_path / "glm4" / "config.json").write_text(json.dumps(glm4))
    (tmp_path / "glm4" / "tokenization_chatglm.py").write_text("import tiktoken\n")
    with pytest.raises(ConversionError, match="GLM-4 remote-code checkpoint.*THUDM/glm-4-9b-chat-hf"):
        convert(tmp_path / "glm4", tmp_path / "out")


def test_refuses_unknown_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "weights.pt").write_bytes(b"")
    with pytest.raises(ConversionError, match="has no config.json \\(it holds: weights.pt\\)"):
        convert(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ConversionError, match="model_type 'qwen2', not 'chatglm'"):
        convert(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "glm"}))
    with pytest.raises(ConversionError, match="already a native transformers model"):
        convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ConversionError, match="is not a folder"):
        convert(tmp_path / "missing", tmp_path / "out")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"transformer.prefix_encoder.embedding.weight": torch.zeros(16, 128)}, "prefix_encoder.*P-Tuning v2"),
        ({"transformer.encoder.layers.0.self_attention.dense.weight": torch.zeros(64, 32, dtype=torch.int8)}, "quantized"),
        ({"classifier_head.weight": torch.zeros(2, 64)}, "ChatGLMForSequenceClassification"),
        ({"transformer.encoder.layers.0.mlp.extra.weight": torch.zeros(2)}, "weight 'transformer.encoder.layers.0.mlp.extra.weight' is not part of"),
    ],
)  # fmt: skip
def test_refuses_weights_it_does_not_know(tmp_path, extra, match):
    make_checkpoint(tmp_path / "src", "chatglm3", extra=extra)
    with pytest.raises(ConversionError, match=match):
        convert(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written is left


def test_refuses_missing_weights_and_other_layouts(tmp_path):
    weights = make_checkpoint(tmp_path / "src", "chatglm2")
    del weights["transformer.output_layer.weight"]
    save_file(weights, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(ConversionError, match="lacks 1 weight.*lm_head.weight"):
        convert(tmp_path / "src", tmp_path / "out")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | {"rmsnorm": False}))
    with pytest.raises(ConversionError, match="rmsnorm=false \\(LayerNorm"):
        convert(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | {"quantization_bit": 4}))
    with pytest.raises(ConversionError, match="quantization_bit=4.*int4/int8"):
        convert(tmp_path / "src", tmp_path / "out")


def test_refuses_ambiguous_family_and_a_used_output_folder(tmp_path):
    make_checkpoint(tmp_path / "src", "chatglm3")
    (tmp_path / "src" / "tokenization_chatglm.py").unlink()
    with pytest.raises(ConversionError, match="Pass --family chatglm2 or --family chatglm3"):
        convert(tmp_path / "src", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists and is not an empty folder"):
        convert(tmp_path / "src", tmp_path / "out", family="chatglm3")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_refuses_a_tokenizer_that_differs_from_sentencepiece(tmp_path, monkeypatch):
    """tokenizers' Metaspace pre-tokenizer skips the "▁" sentencepiece prepends to a text starting with a space."""
    build = convert_chatglm.build_tokenizer

    def metaspace_tokenizer(*args):
        tokenizer = build(*args)
        tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([])
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
        return tokenizer

    monkeypatch.setattr(convert_chatglm, "build_tokenizer", metaspace_tokenizer)
    make_checkpoint(tmp_path / "src", "chatglm2")
    with pytest.raises(ConversionError, match="does not reproduce ChatGLM's tokenization exactly.*' leading space'"):
        convert(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()
