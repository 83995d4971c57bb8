"""zhtrain/chat/format.py: conversations into ids with the chat template, answers and stop tokens, truncation and
refusals.

Literal ids come from a character tokenizer built here (one id per character), so every expectation can be read
off the vocabulary below.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from zhtrain.chat.format import TEMPLATES, ChatFormat, ChatFormatError, choose_chat_template, drop_oldest_turn

CHARACTERS = list("[]Round 0123456789\n问答：你好您再见吗在！。？是的客服系统#abcdefghijklmnopqrstuvwxyzINST<>/_")
SPECIALS = ["<pad>", "</s>", "<|im_start|>", "<|im_end|>"]


def char_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character (ids in CHARACTERS order after the specials); </s> ends texts."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, "<unk>", *dict.fromkeys(CHARACTERS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = chat_template
    return tokenizer


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def learned(encoded) -> list[int]:
    return [i for i in encoded.labels if i != -100]


def turns(*pairs, system=None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in pairs:
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


# A Qwen-style template written for these tests: <|im_start|>role\ncontent<|im_end|>\n
IM_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_default_format_learns_the_answer_and_its_eos_only():
    tokenizer = char_tokenizer()
    choose_chat_template(tokenizer)  # no template of its own: the [Round i] default
    encoded = ChatFormat(tokenizer).encode(turns(("你好", "您好")), learn_all=True, max_source=64, max_target=16)
    prompt = ids(tokenizer, "[Round 1]\n\n问：你好\n\n答：")
    answer = ids(tokenizer, "您好") + [tokenizer.eos_token_id]
    assert encoded.input_ids == prompt + answer
    assert encoded.labels == [-100] * len(prompt) + answer
    assert encoded.prompt_ids == prompt and encoded.answer_ids == answer
    assert tokenizer.chat_template == TEMPLATES["default"]  # stored: the saved tokenizer renders the same


def test_every_answer_is_learned_or_only_the_last_with_mask_history():
    tokenizer = char_tokenizer(IM_TEMPLATE)
    chat_format = ChatFormat(tokenizer)
    conversation = turns(("你好", "您好"), ("再见", "再见！"), system="客服")
    everything = chat_format.encode(conversation, learn_all=True, max_source=200, max_target=16)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert learned(everything) == ids(tokenizer, "您好") + [end] + ids(tokenizer, "再见！") + [end]
    last = chat_format.encode(conversation, learn_all=False, max_source=200, max_target=16)
    assert learned(last) == ids(tokenizer, "再见！") + [end]
    assert last.input_ids == everything.input_ids
    # the prompt is exactly what the template renders as the generation prompt: what serving sends
    generation_prompt = chat_format.render(conversation[:-1], add_generation_prompt=True)
    assert last.prompt_ids == ids(tokenizer, generation_prompt)
    assert chat_format.stop_ids == [tokenizer.eos_token_id, end]


def test_the_oldest_turns_are_dropped_first_then_the_prompt_start_and_the_answer_keeps_its_end():
    tokenizer = char_tokenizer(IM_TEMPLATE)
    chat_format = ChatFormat(tokenizer)
    conversation = turns(("你好", "您好"), ("在吗", "在"), ("再见", "再见！"), system="客服")
    full = chat_format.encode(conversation, learn_all=True, max_source=200, max_target=16)
    one_turn = len(ids(tokenizer, "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n您好<|im_end|>\n"))
    dropped = chat_format.encode(conversation, learn_all=True, max_source=len(full.prompt_ids) - 1, max_target=16)
    assert dropped.turns_dropped == 1 and len(dropped.prompt_ids) == len(full.prompt_ids) - one_turn
    assert tokenizer.decode(dropped.input_ids).startswith("<|im_start|>system\n客服")  # the system prompt stays
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert learned(dropped) == ids(tokenizer, "在") + [end] + ids(tokenizer, "再见！") + [end]
    # no earlier turn left to drop: the start of the prompt goes, its end (the question and the cue) stays
    cut = chat_format.encode(turns(("你好吗你好吗你好吗", "好")), learn_all=True, max_source=20, max_target=16)
    assert cut.prompt_cut and len(cut.prompt_ids) == 20
    assert tokenizer.decode(cut.prompt_ids).endswith("你好吗<|im_end|>\n<|im_start|>assistant\n")
    assert cut.prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # leading special tokens kept
    # a long answer is cut before its stop token, never after
    long = chat_format.encode(turns(("你好", "您好您好您好您好")), learn_all=True, max_source=64, max_target=4)
    assert long.answer_cut and long.answer_ids == ids(tokenizer, "您好您") + [end]


def test_a_conversation_ending_with_the_user_is_a_prompt_to_answer():
    tokenizer = char_tokenizer(IM_TEMPLATE)
    encoded = ChatFormat(tokenizer).encode(turns(("你好", "您好"), ("再见", None)), True, max_source=64, max_target=8)
    assert encoded.labels == [-100] * len(encoded.input_ids) and encoded.answer_ids == []
    assert tokenizer.decode(encoded.prompt_ids).endswith("再见<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_rewrites_answers_is_refused():
    template = IM_TEMPLATE.replace("{{ m['content'] }}", "{{ m['content'] | replace('好', '') }}")
    with pytest.raises(ChatFormatError, match="changes the answers' text"):
        ChatFormat(char_tokenizer(template)).encode(turns(("你好", "您好")), True, 64, 16)


def test_an_answer_without_a_stop_token_is_refused_and_mask_history_is_named():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = TEMPLATES["default"].replace("{{ eos_token }}", "")
    with pytest.raises(ChatFormatError, match="writes no end token after assistant message 2"):
        ChatFormat(tokenizer).encode(turns(("你好", "您好")), True, 64, 16)
    tokenizer = char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["[gMASK]", "<sop>"]})
    tokenizer.chat_template = TEMPLATES["chatglm2"]  # earlier answers are plain prompt text there
    chat_format = ChatFormat(tokenizer)
    conversation = turns(("你好", "您好"), ("再见", "再见！"))
    with pytest.raises(ChatFormatError, match="assistant message 2.*--mask_history"):
        chat_format.encode(conversation, learn_all=True, max_source=64, max_target=16)
    last = chat_format.encode(conversation, learn_all=False, max_source=64, max_target=16)
    assert tokenizer.decode(learned(last)) == " 再见！</s>"  # ChatGLM2 encodes the answer on its own: a leading space


def test_named_templates_need_their_model_tokens():
    with pytest.raises(ChatFormatError, match=r"--template chatglm3 writes \[gMASK\].*convert_chatglm"):
        choose_chat_template(char_tokenizer(), template="chatglm3")
    tokenizer = char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["[gMASK]", "<sop>"]})
    assert choose_chat_template(tokenizer, template="chatglm2") == "--template chatglm2"
    with pytest.raises(ChatFormatError, match="ChatGLM2 has no system prompt"):
        ChatFormat(tokenizer).encode(turns(("你好", "您好"), system="客服"), False, 64, 16)


@pytest.mark.parametrize("name", ["llama2", "alpaca", "baichuan2", "default"])
def test_every_named_template_splits_into_prompt_and_answers(name):
    tokenizer = char_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<reserved_106>", "<reserved_107>", "<s>"]})
    tokenizer.bos_token = "<s>"
    choose_chat_template(tokenizer, template=name)
    chat_format = ChatFormat(tokenizer)
    encoded = chat_format.encode(turns(("你好", "您好"), ("再见", "再见！"), system="客服"), True, 200, 16)
    eos = tokenizer.eos_token_id
    space = " " if name == "llama2" else ""  # Llama-2 writes "[/INST] answer </s>"
    assert tokenizer.decode(learned(encoded)).endswith(f"再见！{space}</s>")
    assert learned(encoded).count(eos) == 2  # both answers end with eos
    assert encoded.input_ids[0] == tokenizer.bos_token_id  # once: templates that write bos are not doubled
    assert encoded.input_ids.count(tokenizer.bos_token_id) == (2 if name == "llama2" else 1)


def test_drop_oldest_turn_keeps_the_system_prompt():
    conversation = turns(("a", "b"), ("c", "d"), system="s")
    assert drop_oldest_turn(conversation) == turns(("c", "d"), system="s")
