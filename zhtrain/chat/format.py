"""How a conversation becomes token ids for a chat model: its chat template, the answer spans, the stop tokens.

Training (run_seq2seq_ptuning.py) and serving (serve.py) both build prompts here, so they cannot drift. The
format is the tokenizer's own chat template, or a named one (`--template`) for tokenizers without one, or a
Jinja file (`--chat_template`). A conversation is rendered once as the template renders it; an answer is the
text from the end of the generation prompt the template renders for that turn, through the answer and the stop
token that follows it (`<|im_end|>`, `<|eot_id|>`, `</s>`, ChatGLM3's next role token...). Whatever the template
adds there (Qwen3's empty `<think>\\n\\n</think>\\n\\n`) is part of the answer, exactly as the model would generate
it. A template that cannot be split that way (it rewrites the answer, its generation prompt is not the start of
the conversation, an answer has no stop token, the tokenizer merges text across the boundary) is refused with
the reason; nothing falls back silently.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from zhtrain.data import LABEL_PAD
from zhtrain.errors import UserError

logger = logging.getLogger(__name__)

# Formats of models whose tokenizer ships no chat template. Each renders one conversation of system / user /
# assistant messages; an answer ends with the model's end token, so every turn can be learned.
TEMPLATES = {
    # ChatGLM2-6B (THUDM ptuning/main.py and chat()): [gMASK] <sop> then "[Round i]\n\n问：...\n\n答：". The answer
    # being learned starts with a space: ChatGLM encodes it separately and sentencepiece gives it a leading "▁".
    # Earlier answers are plain prompt text, with no end token (only the last answer can be learned).
    "chatglm2": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('ChatGLM2 has no system prompt: drop --system_prompt / the system messages, or use "
        "ChatGLM3.') }}{%- endif %}"
        "[gMASK]<sop>"
        "{%- set ns = namespace(round=0) %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{%- set ns.round = ns.round + 1 %}"
        "[Round {{ ns.round }}]\n\n问：{{ message['content'] }}\n\n答："
        "{%- elif loop.last %} {{ message['content'] }}{{ eos_token }}"
        "{%- else %}{{ message['content'] }}\n\n{% endif %}"
        "{%- endfor %}"
    ),
    # ChatGLM3-6B: <|role|> then "\n" and the message, each piece encoded on its own (hence the space after "\n").
    # An assistant turn ends where the next role token starts; the last one with eos, as ChatGLM3's finetune does.
    "chatglm3": (
        "[gMASK]<sop>"
        "{%- for message in messages %}"
        "{%- if message['role'] not in ('system', 'user', 'assistant') %}"
        "{{ raise_exception('ChatGLM3 roles are system, user and assistant, not ' + message['role']) }}{%- endif %}"
        "<|{{ message['role'] }}|>\n {{ message['content'] }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}<|assistant|>"
        "{%- elif messages[-1]['role'] == 'assistant' %}{{ eos_token }}{%- endif %}"
    ),
    # Llama-2-chat and Chinese-Alpaca-2: <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] answer </s>
    "llama2": (
        "{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}"
        "{%- for message in messages if message['role'] != 'system' %}"
        "{%- if message['role'] == 'user' %}{{ bos_token }}[INST] "
        "{%- if system is not none and loop.first %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
        "{{ message['content'] }} [/INST]"
        "{%- else %} {{ message['content'] }} {{ eos_token }}{%- endif %}"
        "{%- endfor %}"
    ),
    # Baichuan2-chat: <reserved_106> user <reserved_107> answer </s>; a system text goes first, as is.
    "baichuan2": (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'system' %}{{ message['content'] }}"
        "{%- elif message['role'] == 'user' %}<reserved_106>{{ message['content'] }}"
        "{%- else %}<reserved_107>{{ message['content'] }}{{ eos_token }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}<reserved_107>{%- endif %}"
    ),
    # Stanford Alpaca: the instruction preamble (or the system prompt), then ### Instruction / ### Response.
    "alpaca": (
        "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{%- else %}Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.{%- endif %}"
        "{%- for message in messages if message['role'] != 'system' %}"
        "{%- if message['role'] == 'user' %}\n\n### Instruction:\n{{ message['content'] }}\n\n### Response:\n"
        "{% else %}{{ message['content'] }}{{ eos_token }}{%- endif %}"
        "{%- endfor %}"
    ),
    # This project's format for models with no format of their own (a Chinese GPT-2 on a BERT vocabulary):
    # ChatGLM2's "[Round i]" text, every answer ended by eos.
    "default": (
        "{%- set ns = namespace(round=0) %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}{%- set ns.round = ns.round + 1 %}"
        "{%- if ns.round > 1 %}\n\n{% endif %}[Round {{ ns.round }}]\n\n问：{{ message['content'] }}\n\n答："
        "{%- else %}{{ message['content'] }}{{ eos_token }}{%- endif %}"
        "{%- endfor %}"
    ),
}
TEMPLATE_NAMES = tuple(TEMPLATES)
MARKER = "\ue000{}\ue001"  # stands for an answer while the template renders (private-use characters)


class ChatFormatError(UserError):
    """The conversation cannot be split into prompt and answers with this template; the message says why."""


def choose_chat_template(tokenizer, template: str | None = None, chat_template_file: str | None = None) -> str:
    """Set and return the chat template: --chat_template FILE, --template NAME, the tokenizer's own, or `default`.

    The template is stored on the tokenizer, so the saved model's tokenizer renders prompts the same way.
    """
    if chat_template_file:
        tokenizer.chat_template = Path(chat_template_file).read_text(encoding="utf-8")
        source = f"--chat_template {chat_template_file}"
    elif template:
        tokenizer.chat_template = TEMPLATES[template]
        source = f"--template {template}"
    elif getattr(tokenizer, "chat_template", None):
        source = "the tokenizer's chat template"
    else:
        tokenizer.chat_template = TEMPLATES["default"]
        source = "--template default"
        logger.warning(
            "The tokenizer has no chat template: using --template default ([Round i] 问/答, answers end with %s). "
            "Pass --template %s, or --chat_template FILE, for another model's format.",
            tokenizer.eos_token,
            "|".join(t for t in TEMPLATE_NAMES if t != "default"),
        )
    for token in re.findall(
        r"\[gMASK\]|<sop>|<\|(?:system|user|assistant)\|>|<reserved_10[67]>", tokenizer.chat_template
    ):
        if token not in tokenizer.get_vocab():
            raise ChatFormatError(
                f"{source} writes {token}, which this tokenizer does not have as a token: the format belongs to "
                "another model family (ChatGLM checkpoints are converted first: python scripts/convert_chatglm.py)."
            )
    return source


@dataclass
class Encoded:
    """One conversation as token ids: labels carry the learned answers, -100 elsewhere."""

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]  # everything before the last answer: what generation continues
    answer_ids: list[int]  # the last answer's ids as trained (end token included); [] when it has none
    turns_dropped: int = 0
    prompt_cut: bool = False
    answer_cut: bool = False


class ChatFormat:
    """Render conversations with the tokenizer's chat template and find the answers in the token ids.

    `template_kwargs` go to the template (e.g. `enable_thinking`). `extra_stop_ids` are end ids the model's
    generation config names; the stop ids are those plus eos plus every end token the template puts after an
    answer.
    """

    def __init__(self, tokenizer, template_kwargs: dict | None = None, extra_stop_ids=()):
        if not getattr(tokenizer, "is_fast", False):
            raise ChatFormatError(
                f"{type(tokenizer).__name__} is not a fast tokenizer: finding the answers in the token ids needs "
                "the offsets only fast tokenizers give."
            )
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})
        special = sorted(
            set(tokenizer.all_special_tokens)
            | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special},
            key=len,
            reverse=True,
        )
        self.special_pattern = re.compile("|".join(re.escape(t) for t in special if t))
        stop_texts = self._template_end_tokens()
        ids = [tokenizer.eos_token_id, *extra_stop_ids, *(tokenizer.convert_tokens_to_ids(t) for t in stop_texts)]
        self.stop_ids = list(dict.fromkeys(i for i in ids if i is not None))
        texts = {tokenizer.convert_ids_to_tokens(i) for i in self.stop_ids}
        self.stop_pattern = re.compile(
            r"\s*(" + "|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)) + ")"
        )

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as the template renders it."""
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.template_kwargs
            )
        except TemplateError as exc:
            raise ChatFormatError(f"the chat template refused the conversation: {exc}") from None

    def _template_end_tokens(self) -> list[str]:
        """The special tokens the template writes right after an answer (a probe conversation of two turns)."""
        probe = [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": MARKER.format(0)},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": MARKER.format(1)},
        ]
        text = self.render(probe)
        found = []
        for i in range(2):
            after = text[text.index(MARKER.format(i)) + len(MARKER.format(i)) :].lstrip()
            match = self.special_pattern.match(after)
            if match:
                found.append(match.group(0))
        return found

    def layout(self, messages: list[dict], learned: list[int]) -> tuple[str, list[tuple[int, int, int | None]]]:
        """The rendered text and, per learned assistant message (by index), (start, end, end-token start or None).

        An answer starts where the generation prompt the template renders for that turn ends; it ends after the
        answer's text and the stop token that follows it (None when the template puts none there).
        """
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        marked = [dict(m) for m in messages]
        for n, index in enumerate(assistants):
            marked[index]["content"] = MARKER.format(n)
        text_marked, text, content_start, cursor = self.render(marked), "", {}, 0
        for n, index in enumerate(assistants):
            at = text_marked.find(MARKER.format(n), cursor)
            if at < 0:
                raise ChatFormatError(f"the chat template does not write assistant message {index + 1}'s text")
            text += text_marked[cursor:at]
            content_start[index] = len(text)
            text += messages[index]["content"]
            cursor = at + len(MARKER.format(n))
        text += text_marked[cursor:]
        if text != self.render(messages):
            raise ChatFormatError(
                "the chat template changes the answers' text (it strips, splits or rewrites them), so the answers "
                "cannot be found in the training text; strip the answers, or choose --template / --chat_template"
            )
        spans = []
        for index in learned:
            prompt = self.render(messages[:index], add_generation_prompt=True)
            if not text.startswith(prompt) or len(prompt) > content_start[index]:
                raise ChatFormatError(
                    f"the generation prompt the template renders for assistant message {index + 1} is not how the "
                    "conversation goes on (the template writes earlier turns differently), so that answer cannot "
                    "be learned as the model would generate it; learn only the last answer with --mask_history"
                )
            content_end = content_start[index] + len(messages[index]["content"])
            match = self.stop_pattern.match(text, content_end)
            spans.append((len(prompt), *((match.end(), match.start(1)) if match else (content_end, None))))
        return text, spans

    def token_spans(self, text: str, spans: list[tuple]) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Token ids of `text` and, per answer, (first token, end, first end-of-turn token) indices.

        The text is tokenized whole, as `apply_chat_template` does. Where a token spans a prompt/answer boundary
        (Qwen3-Thinking's "<think>\n" + "\n</think>" become one "\n\n"), the pieces are tokenized one by one
        instead: the prompt then has the ids serving sends, and the answer ids the model can generate after it.
        """
        cuts = sorted({p for span in spans for p in span if p is not None})
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        index_of = {}
        for cut in cuts:
            index = next((i for i, (start, _) in enumerate(offsets) if start >= cut), len(ids))
            if index > 0 and offsets[index - 1][1] > cut:
                ids, index_of = self._piecewise(text, cuts, cut)
                break
            index_of[cut] = index
        result = []
        for start, end, stop_start in spans:
            result.append((index_of[start], index_of[end], index_of[stop_start if stop_start is not None else end]))
        return ids, result

    def _piecewise(self, text: str, cuts: list[int], straddled: int) -> tuple[list[int], dict[int, int]]:
        """Piece-by-piece ids and the token index of each cut; refused unless the pieces decode back to the text."""
        bounds, ids, index_of = [0, *cuts, len(text)], [], {}
        for a, b in zip(bounds, bounds[1:]):
            index_of[a] = len(ids)
            ids += self.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        if self.tokenizer.decode(ids, clean_up_tokenization_spaces=False) != text:
            raise ChatFormatError(
                "the tokenizer merges text across the prompt/answer boundary "
                f"({text[max(0, straddled - 12) : straddled + 12]!r}), and tokenized apart the two sides do not "
                "decode to the same text"
            )
        return ids, index_of

    def encode(self, messages: list[dict], learn_all: bool, max_source: int, max_target: int) -> Encoded:
        """Token ids of a conversation within the limits: the prompt (all before the last answer) and the answer.

        The oldest turns are dropped first, then the start of the prompt is cut (its leading special tokens
        kept); an answer longer than `max_target` loses its end of text, never its stop token. Learns every
        answer (`learn_all`) or the last one; a conversation ending with a user message is a prompt only.
        """
        dropped = 0
        while True:
            ids, spans, prompt_length = self._tokens(messages, learn_all)
            if prompt_length <= max_source or not has_earlier_turn(messages):
                break
            messages, dropped = drop_oldest_turn(messages), dropped + 1
        lead = 0
        while lead < len(ids) and ids[lead] in self.tokenizer.all_special_ids and lead < max_source // 2:
            lead += 1
        prompt_cut = prompt_length > max_source
        if prompt_cut:  # keep the end: it holds the question and the cue the model answers after
            shift = prompt_length - max_source
            ids = ids[:lead] + ids[lead + shift :]
            spans = [(a - shift, b - shift, c - shift) for a, b, c in spans if a - shift >= lead]
            prompt_length = max_source
        answer_cut, answer = False, []
        if messages[-1]["role"] == "assistant":
            first, end, stop = spans[-1]
            if end - first > max_target:
                keep = max(max_target - (end - stop), 0)
                ids = ids[: first + keep] + ids[stop:end]
                end, answer_cut = first + keep + (end - stop), True
                spans[-1] = (first, end, first + keep)
            ids, answer = ids[:end], ids[first:end]
        labels = [LABEL_PAD] * len(ids)
        for first, end, _ in spans:
            labels[first:end] = ids[first:end]
        return Encoded(ids, labels, ids[:prompt_length], answer, dropped, prompt_cut, answer_cut)

    def _tokens(self, messages: list[dict], learn_all: bool) -> tuple[list[int], list[tuple], int]:
        """(ids, learned answers as token index triples, prompt length): bos first where the tokenizer uses one."""
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if messages[-1]["role"] == "assistant":
            learned = assistants if learn_all else assistants[-1:]
            text, spans = self.layout(messages, learned)
            for index, (_, _, stop) in zip(learned, spans):
                if stop is None:
                    raise ChatFormatError(
                        f"the chat template writes no end token after assistant message {index + 1}, so the model "
                        "could not learn where that answer stops"
                        + ("; learn only the last answer with --mask_history" if index != assistants[-1] else "")
                    )
            ids, token_spans = self.token_spans(text, spans)
            prompt_length = token_spans[-1][0]
        else:
            ids, token_spans = self.token_spans(self.render(messages, add_generation_prompt=True), [])
            prompt_length = len(ids)
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids, prompt_length = [bos, *ids], prompt_length + 1
            token_spans = [(a + 1, b + 1, c + 1) for a, b, c in token_spans]
        return ids, token_spans, prompt_length


def encoder_decoder_prompt(tokenizer, messages: list[dict]) -> str:
    """The source text of an encoder-decoder model (T5): the conversation before the answer in this project's
    [Round i] format, no end token (the tokenizer adds its own).
    """
    return tokenizer.apply_chat_template(messages, chat_template=TEMPLATES["default"], tokenize=False, eos_token="")


def has_earlier_turn(messages: list[dict]) -> bool:
    """Whether a user turn before the last one can be dropped (the last question and its answer stay)."""
    return sum(m["role"] == "user" for m in messages) > 1


def drop_oldest_turn(messages: list[dict]) -> list[dict]:
    """The conversation without its first user message and the answer to it (system messages stay)."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    answer = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] != "assistant"), len(messages))
    return messages[:first] + messages[answer:]
