"""zhtrain/chat/data.py: every layout of chat data read into conversations, and the reasons a row is dropped."""

from types import SimpleNamespace

import pytest
from datasets import Dataset

from zhtrain.chat.data import ChatColumns, conversation_of, conversation_problem, find_chat_columns, read_messages

FLAGS = dict(messages_column=None, prompt_column=None, response_column=None, history_column=None)


def columns_of(rows: list[dict], split: str = "train", **flags) -> ChatColumns:
    return find_chat_columns(Dataset.from_list(rows), split, SimpleNamespace(**{**FLAGS, **flags}))


def read(row: dict, system_prompt=None, source_prefix="", **flags):
    chat_columns = columns_of([row], **flags)
    values = {role: row[column] for role, column in chat_columns.columns.items()}
    return conversation_of(values, chat_columns, system_prompt, source_prefix)


def test_openai_messages():
    row = {"messages": [{"role": "system", "content": "你是客服"}, {"role": "user", "content": " 在吗 "},
                        {"role": "assistant", "content": "在的"}]}  # fmt: skip
    assert columns_of([row]).layout == "messages"
    assert read(row) == [
        {"role": "system", "content": "你是客服"},
        {"role": "user", "content": "在吗"},
        {"role": "assistant", "content": "在的"},
    ]


def test_sharegpt_conversations_map_human_and_gpt():
    row = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "您好"}], "id": 3}
    assert columns_of([row]).columns == {"messages": "conversations"}
    assert read(row, system_prompt="简洁回答") == [
        {"role": "system", "content": "简洁回答"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "您好"},
    ]


def test_a_named_messages_column_and_json_text_in_csv_cells():
    row = {"chat": '[{"role": "user", "content": "几点了"}, {"role": "assistant", "content": "三点"}]'}
    assert [m["content"] for m in read(row, messages_column="chat")] == ["几点了", "三点"]


def test_chatglm_rows_with_history_and_a_source_prefix():
    row = {"prompt": "它多少钱？", "response": "259元。", "history": [["我想买鞋", "好的"]]}
    chat_columns = columns_of([row])
    assert chat_columns.layout == "chatglm" and chat_columns.is_chatglm_file
    assert read(row, source_prefix="客服：") == [
        {"role": "user", "content": "我想买鞋"},
        {"role": "assistant", "content": "好的"},
        {"role": "user", "content": "客服：它多少钱？"},
        {"role": "assistant", "content": "259元。"},
    ]


def test_alpaca_rows_join_instruction_and_input():
    row = {"instruction": "翻译成英文", "input": "你好", "output": "Hello", "system": "你是翻译"}
    assert columns_of([row]).layout == "alpaca"
    assert read(row) == [
        {"role": "system", "content": "你是翻译"},
        {"role": "user", "content": "翻译成英文\n你好"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_reasoning_in_the_answer_becomes_reasoning_content():
    row = {
        "messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "<think>一加一</think>2"}]
    }
    assert read(row)[-1] == {"role": "assistant", "content": "2", "reasoning_content": "一加一"}


def test_a_test_file_may_have_no_answers():
    assert "response" not in columns_of([{"content": "类型#裙"}], split="test").columns


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "wrong role order: user after user"),
        ([{"role": "assistant", "content": "a"}], "wrong role order: assistant after the start"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}], "empty assistant turn"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "unknown role 'tool'"),
        ([{"role": "user", "content": "a"}], "no assistant turn to learn"),
        ([{"role": "system", "content": "s"}], "no user turn"),
        ("the messages are not valid JSON", "the messages are not valid JSON"),
    ],
)
def test_malformed_conversations_say_why(messages, reason):
    assert reason in conversation_problem(messages, needs_answer=True)


def test_predict_rows_may_end_with_the_question():
    assert conversation_problem([{"role": "user", "content": "a"}], needs_answer=False) is None


def test_messages_that_are_not_a_list_of_objects():
    assert read_messages('{"role": "user"}') == "the messages are not a list of objects"
    assert "neither role/content nor from/value" in read_messages([{"speaker": "a"}])
