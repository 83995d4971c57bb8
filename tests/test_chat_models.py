"""The real chat formats: prompts and learned answers equal what each model family's own template renders.

The tokenizers and chat templates of Qwen2.5, Qwen3 and Qwen3-Thinking-2507 are read from ../shared/models (the
tests skip when it is absent, as in a user's fresh clone); a Llama-3-style tokenizer and a Chinese GPT-2 on a
BERT vocabulary are built here.
"""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from demo_models import build_bpe_tokenizer, build_tokenizer
from zhtrain.chat.format import ChatFormat, choose_chat_template

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason=f"the real tokenizers are not here: {MODELS} is missing")

CONVERSATION = [
    {"role": "system", "content": "你是一个电商客服。"},
    {"role": "user", "content": "这双运动鞋多少钱？"},
    {"role": "assistant", "content": "这双运动鞋的价格是259元。"},
    {"role": "user", "content": "有红色的吗？"},
    {"role": "assistant", "content": "有的，红色有货。"},
]

# Llama-3's format, written for the test: bos, then <|start_header_id|>role<|end_header_id|>\n\n text <|eot_id|>
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def shared_tokenizer(name: str):
    tokenizer = AutoTokenizer.from_pretrained(MODELS / name)
    stops = json.loads((MODELS / name / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    return tokenizer, stops


def llama3_tokenizer(tmp_path):
    texts = [m["content"] for m in CONVERSATION] * 20
    tokenizer = build_bpe_tokenizer(texts, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, vocab_size=400)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"]}
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    # Llama-3.1's generation config stops at <|end_of_text|>, <|eom_id|> (absent here) and <|eot_id|>
    return tokenizer, [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.eos_token_id]


def text_of(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_against_the_template(tokenizer, stops, learn_all: bool, answers: list[str], **template_kwargs):
    """The ids decode to the template's own rendering; the prompt is its generation prompt; labels are `answers`."""
    chat_format = ChatFormat(tokenizer, template_kwargs, stops)
    encoded = chat_format.encode(CONVERSATION, learn_all, max_source=512, max_target=128)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, **template_kwargs)
    assert rendered.startswith(text_of(tokenizer, encoded.input_ids))
    assert rendered[len(text_of(tokenizer, encoded.input_ids)) :].strip() == ""  # only a newline may follow
    generation_prompt = tokenizer.apply_chat_template(
        CONVERSATION[:-1], tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    assert encoded.prompt_ids == tokenizer(generation_prompt, add_special_tokens=False)["input_ids"]
    assert text_of(tokenizer, [i for i in encoded.labels if i != -100]) == "".join(answers)
    assert set(stops) <= set(chat_format.stop_ids)
    return chat_format


@needs_models
def test_qwen25_learns_every_answer_with_its_im_end():
    tokenizer, stops = shared_tokenizer("qwen2.5-instruct")
    chat_format = check_against_the_template(
        tokenizer, stops, True, ["这双运动鞋的价格是259元。<|im_end|>", "有的，红色有货。<|im_end|>"]
    )
    assert tokenizer.convert_ids_to_tokens(chat_format.stop_ids) == ["<|im_end|>", "<|endoftext|>"]


@needs_models
def test_qwen3_puts_the_empty_think_block_in_the_last_answer_or_in_the_prompt():
    tokenizer, stops = shared_tokenizer("qwen3")
    last = "<think>\n\n</think>\n\n有的，红色有货。<|im_end|>"  # the template's own rendering of a plain answer
    check_against_the_template(tokenizer, stops, True, ["这双运动鞋的价格是259元。<|im_end|>", last])
    # --enable_thinking false: the non-thinking generation prompt holds the empty block; only the answer is learned
    check_against_the_template(tokenizer, stops, False, ["有的，红色有货。<|im_end|>"], enable_thinking=False)


@needs_models
def test_qwen3_reasoning_in_the_data_is_learned_inside_the_think_block():
    tokenizer, stops = shared_tokenizer("qwen3")
    conversation = [*CONVERSATION[:-1], {**CONVERSATION[-1], "reasoning_content": "用户问颜色，查库存。"}]
    encoded = ChatFormat(tokenizer, {}, stops).encode(conversation, False, 512, 128)
    learned = text_of(tokenizer, [i for i in encoded.labels if i != -100])
    assert learned == "<think>\n用户问颜色，查库存。\n</think>\n\n有的，红色有货。<|im_end|>"


@needs_models
def test_qwen3_thinking_2507_closes_the_think_block_its_prompt_opens():
    tokenizer, stops = shared_tokenizer("qwen3-thinking-2507")
    check_against_the_template(tokenizer, stops, False, ["\n</think>\n\n有的，红色有货。<|im_end|>"])


def test_llama3_style_learns_every_answer_with_eot(tmp_path):
    tokenizer, stops = llama3_tokenizer(tmp_path)
    chat_format = check_against_the_template(
        tokenizer, stops, True, ["这双运动鞋的价格是259元。<|eot_id|>", "有的，红色有货。<|eot_id|>"]
    )
    assert tokenizer.convert_ids_to_tokens(chat_format.stop_ids) == ["<|eot_id|>", "<|end_of_text|>"]


def test_bert_vocabulary_gpt2_uses_the_default_format_ending_answers_with_sep(tmp_path):
    build_tokenizer(tmp_path / "vocab")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "vocab")
    tokenizer.eos_token = tokenizer.sep_token  # as run_seq2seq_ptuning.py does for BERT vocabularies
    assert choose_chat_template(tokenizer) == "--template default"
    encoded = ChatFormat(tokenizer).encode(CONVERSATION, True, 512, 128)
    learned = tokenizer.decode([i for i in encoded.labels if i != -100]).replace(" ", "")
    assert learned == "这双运动鞋的价格是259元。[SEP]有的，红色有货。[SEP]"
    assert tokenizer.decode(encoded.prompt_ids).replace(" ", "").endswith("[round2]问：有红色的吗？答：")
