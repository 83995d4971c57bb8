"""Chat data as users have it, read into conversations: lists of {"role", "content"} messages.

Four layouts, told apart by their columns:
- OpenAI `messages`: [{"role": "system" | "user" | "assistant", "content": ...}, ...];
- ShareGPT `conversations`: [{"from": "system" | "human" | "gpt", "value": ...}, ...];
- ChatGLM (`ptuning/`): a prompt column, a response column, an optional `history` of [query, answer] pairs;
- Alpaca: `instruction`, optional `input`, `output`, optional `history`.
A conversation is an optional system message, then user and assistant turns in turn; a training row ends with
an answer. `conversation_problem` says what is wrong with one that is not (the row is then dropped and counted).
"""

import json
from dataclasses import dataclass

from zhtrain.data.files import find_column, is_blank

PROMPT_COLUMNS = ("content", "prompt", "query", "question", "input")
RESPONSE_COLUMNS = ("summary", "response", "answer", "output", "target")
MESSAGES_COLUMNS = ("messages", "conversations")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant")


@dataclass
class ChatColumns:
    """Where a split's conversations are: a messages column, or ChatGLM / Alpaca columns by role."""

    layout: str  # messages | chatglm | alpaca
    columns: dict[str, str]  # role -> column: messages | prompt, response, history | instruction, input, ...

    @property
    def is_chatglm_file(self) -> bool:
        """ChatGLM and Alpaca files: their `history` answers were written as context, not as examples."""
        return self.layout in ("chatglm", "alpaca")


def find_chat_columns(dataset, split: str, task_args) -> ChatColumns:
    """The layout of a split and the columns it uses, from the flags or the usual column names."""
    columns = dataset.column_names
    wanted = task_args.messages_column
    if wanted or (task_args.prompt_column is None and any(c in columns for c in MESSAGES_COLUMNS)):
        column = find_column(dataset, wanted, "messages_column", MESSAGES_COLUMNS, split)
        return ChatColumns("messages", {"messages": column})
    if task_args.prompt_column is None and "instruction" in columns:
        roles = {"instruction": "instruction", **({"input": "input"} if "input" in columns else {})}
        response_column = task_args.response_column or "output"
        layout = "alpaca"
    else:
        roles = {"prompt": find_column(dataset, task_args.prompt_column, "prompt_column", PROMPT_COLUMNS, split)}
        response_column = task_args.response_column
        layout = "chatglm"
    has_response = response_column in columns if response_column else bool(set(RESPONSE_COLUMNS) & set(columns))
    if split != "test" or has_response:  # test files may come without answers: predict only
        roles["response"] = find_column(dataset, response_column, "response_column", RESPONSE_COLUMNS, split)
    if task_args.history_column or "history" in columns:
        roles["history"] = find_column(dataset, task_args.history_column, "history_column", ("history",), split)
    if "system" in columns:
        roles["system"] = "system"
    return ChatColumns(layout, roles)


def read_history(value) -> list[tuple[str, str]] | None:
    """[[query, answer], ...] as a list of string pairs; [] when missing; None when malformed.

    >>> read_history('[["几点了", "三点"]]'), read_history(None), read_history([["只有问题"]])
    ([('几点了', '三点')], [], None)
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):  # csv cells hold JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in value):
        return None
    return [(str(q), str(a)) for q, a in value]


def read_messages(value) -> list[dict] | str:
    """OpenAI or ShareGPT messages as [{"role", "content"}] (ShareGPT roles mapped); a reason when malformed."""
    if isinstance(value, str):  # csv cells hold JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return "the messages are not valid JSON"
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return "the messages are not a list of objects"
    messages = []
    for item in value:
        if "role" in item:
            role, content = item.get("role"), item.get("content")
        elif "from" in item:
            role, content = SHAREGPT_ROLES.get(str(item.get("from")), str(item.get("from"))), item.get("value")
        else:
            return f"a message has neither role/content nor from/value keys (keys: {', '.join(item)})"
        message = {"role": role, "content": "" if content is None else str(content).strip()}
        if not is_blank(item.get("reasoning_content")):
            message["reasoning_content"] = str(item["reasoning_content"]).strip()
        messages.append(message)
    return messages


def split_reasoning(message: dict) -> dict:
    """An answer written as "<think>reasoning</think>answer" as its reasoning_content and its answer.

    >>> split_reasoning({"role": "assistant", "content": "<think>\\n先算\\n</think>\\n\\n答案是2"})
    {'role': 'assistant', 'content': '答案是2', 'reasoning_content': '先算'}
    """
    content = message["content"]
    if message["role"] != "assistant" or not content.startswith("<think>") or "</think>" not in content:
        return message
    reasoning, _, answer = content[len("<think>") :].partition("</think>")
    return {**message, "content": answer.strip(), "reasoning_content": reasoning.strip()}


def conversation_of(row: dict, chat_columns: ChatColumns, system_prompt: str | None, source_prefix: str):
    """The messages of one row (values by role), or a reason string when it cannot be read."""
    if chat_columns.layout == "messages":
        messages = read_messages(row["messages"])
        if isinstance(messages, str):
            return messages
    else:
        history = read_history(row.get("history"))
        if history is None:
            return "history is not a list of [query, answer] pairs"
        if chat_columns.layout == "alpaca":
            extra = row.get("input")
            query = str(row["instruction"] or "").strip()
            query += "\n" + str(extra).strip() if not is_blank(extra) else ""
        else:
            query = "" if is_blank(row["prompt"]) else str(row["prompt"]).strip()
        messages = (
            [{"role": "system", "content": str(row["system"]).strip()}] if not is_blank(row.get("system")) else []
        )
        for q, a in history:
            messages += [{"role": "user", "content": q.strip()}, {"role": "assistant", "content": a.strip()}]
        messages.append({"role": "user", "content": query})
        if "response" in row and not is_blank(row["response"]):
            messages.append({"role": "assistant", "content": str(row["response"]).strip()})
    messages = [split_reasoning(m) for m in messages]
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    if source_prefix:
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is not None:
            messages[last_user] = {**messages[last_user], "content": source_prefix + messages[last_user]["content"]}
    return messages


def conversation_problem(messages, needs_answer: bool) -> str | None:
    """Why a conversation cannot be used (an unknown role, a wrong order, an empty turn, no answer), or None.

    >>> conversation_problem([{"role": "user", "content": "在吗"}, {"role": "user", "content": "在吗"}], True)
    'wrong role order: user after user (turns must alternate user, assistant)'
    """
    if isinstance(messages, str):
        return messages
    unknown = sorted({m["role"] for m in messages} - set(ROLES))
    if unknown:
        return f"unknown role {', '.join(map(repr, unknown))} (roles are system, user, assistant; ShareGPT human, gpt)"
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return "no user turn"
    for position, message in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            before = turns[position - 1]["role"] if position else "the start"
            return f"wrong role order: {message['role']} after {before} (turns must alternate user, assistant)"
        if not message["content"]:
            return f"empty {message['role']} turn"
    if needs_answer and turns[-1]["role"] != "assistant":
        return "no assistant turn to learn (the conversation ends with the user)"
    return None
