"""Instruction formats -> conversations -> text with trainable spans -> token ids and loss labels."""

from __future__ import annotations

import pytest

from tunelab.data.conversations import Conversation, detect_format, prompt_messages, required_columns, to_conversation
from tunelab.data.templates import IGNORE, Template, tokenize, truncate
from tunelab.errors import UserError


@pytest.fixture(scope="module")
def smol(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def trained_text(tok, example) -> str:
    return tok.decode([t for t, y in zip(example["input_ids"], example["labels"]) if y != IGNORE])


# ---------------------------------------------------------------------------- formats

def test_alpaca_with_and_without_input() -> None:
    conv = to_conversation({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "alpaca", "r")
    assert conv.messages == [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    conv = to_conversation({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca", "r")
    assert conv.messages[0]["content"] == "Say hi."


def test_messages_sharegpt_prompt_completion_text_and_system_prompt() -> None:
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}]}
    conv = to_conversation(row, "messages", "r", system_prompt="ignored: the row has one")
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]
    conv = to_conversation({"prompt": "2+2=", "completion": "4"}, "prompt_completion", "r", system_prompt="Math.")
    assert conv.messages[0] == {"role": "system", "content": "Math."}
    assert conv.prompt_and_reference() == (conv.messages[:-1], "4")
    assert to_conversation({"body": "Some text."}, "text", "r", text_column="body") == Conversation(text="Some text.")


@pytest.mark.parametrize("columns, fmt", [
    (["instruction", "input", "output"], "alpaca"), (["messages"], "messages"), (["conversations", "id"], "messages"),
    (["prompt", "completion"], "prompt_completion"), (["text"], "text"),
])
def test_format_detection(columns, fmt) -> None:
    assert detect_format(columns) == fmt


@pytest.mark.parametrize("row, fmt, fragment", [
    ({"instruction": "x"}, "alpaca", "'output' is empty"),
    ({"instruction": 3, "output": "y"}, "alpaca", "'instruction' must be text"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "last turn must be the assistant"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", "unknown role 'robot'"),
    ({"messages": [{"from": "alien", "value": "hi"}]}, "messages", "unknown ShareGPT speaker"),
    ({"messages": [{"text": "hi"}]}, "messages", "needs 'role' and 'content'"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "messages", "no user turn"),
])
def test_rows_that_do_not_fit_are_one_line_errors(row, fmt, fragment) -> None:
    with pytest.raises(UserError, match=fragment) as err:
        to_conversation(row, fmt, "train row 7")
    assert "train row 7" in str(err.value) and "\n" not in str(err.value)


def test_unknown_columns_and_missing_columns() -> None:
    with pytest.raises(UserError, match="cannot tell the instruction format"):
        detect_format(["question", "answer"])
    with pytest.raises(UserError, match="needs column\\(s\\) output"):
        required_columns("alpaca", ["instruction"])


def test_prompt_messages_drop_a_reference_answer() -> None:
    turns = prompt_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "r")
    assert turns == [{"role": "user", "content": "q"}]
    with pytest.raises(UserError, match="end with a user turn"):
        prompt_messages([{"role": "system", "content": "s"}], "r")


# ---------------------------------------------------------------------------- templates and labels

def test_chat_template_trains_only_the_answer_and_end_of_turn(smol) -> None:
    conv = to_conversation({"instruction": "Define \"dog\".", "output": "A domesticated canine."}, "alpaca", "r")
    template = Template.resolve("auto", smol)
    assert template.kind == "chat"
    example = tokenize(template.render(conv, smol), smol, train_on_prompt=False, template=template)
    assert trained_text(smol, example) == "A domesticated canine.<|im_end|>\n"
    assert smol.decode(example["input_ids"]).startswith("<|im_start|>system")
    prompt = template.prompt(conv.messages[:-1], smol)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert smol.decode(example["input_ids"]).startswith(prompt)


def test_multi_turn_chat_trains_every_assistant_turn(smol) -> None:
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}
    template = Template.resolve("chat", smol)
    example = tokenize(template.render(to_conversation(row, "messages", "r"), smol), smol,
                       train_on_prompt=False, template=template)
    assert trained_text(smol, example) == "Hello!<|im_end|>\nGoodbye.<|im_end|>\n"


def test_alpaca_and_user_templates_end_responses_with_eos(smol) -> None:
    conv = to_conversation({"prompt": "2+2=", "completion": "4"}, "prompt_completion", "r")
    alpaca = Template.resolve("alpaca", smol)
    rendered = alpaca.render(conv, smol)
    assert "### Instruction:\n2+2=\n\n### Response:\n4<|im_end|>" in rendered.text
    example = tokenize(rendered, smol, train_on_prompt=False, template=alpaca)
    assert trained_text(smol, example) == "4<|im_end|>"
    user = Template.resolve("Q: {prompt}\nA: ", smol)
    example = tokenize(user.render(conv, smol), smol, train_on_prompt=False, template=user)
    assert smol.decode(example["input_ids"]) == "Q: 2+2=\nA: 4<|im_end|>"
    assert trained_text(smol, example) == "4<|im_end|>"
    assert user.prompt(conv.messages[:-1], smol) == "Q: 2+2=\nA: "


def test_train_on_prompt_and_plain_text_label_everything(smol) -> None:
    conv = to_conversation({"prompt": "2+2=", "completion": "4"}, "prompt_completion", "r")
    template = Template.resolve("chat", smol)
    example = tokenize(template.render(conv, smol), smol, train_on_prompt=True, template=template)
    assert example["labels"] == example["input_ids"]
    text = tokenize(template.render(Conversation(text="Once upon a time."), smol), smol, train_on_prompt=True,
                    template=template)
    assert smol.decode(text["input_ids"]) == "Once upon a time.<|im_end|>"


def test_template_choice_errors(smol, tiny_bert_dir) -> None:
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert Template.resolve("auto", bert).kind == "alpaca"  # no chat template
    with pytest.raises(UserError, match="no chat template"):
        Template.resolve("chat", bert)
    with pytest.raises(UserError, match="lacks the \\{prompt\\} placeholder"):
        Template.resolve("nonsense", smol)
    with pytest.raises(UserError, match="only the placeholders"):
        Template.resolve("{prompt} {other}", smol)


@pytest.mark.parametrize("policy, kept", [("right", [1, 2, 3, 4]), ("left", [3, 4, 5, 6])])
def test_truncation_keeps_the_chosen_end(policy, kept) -> None:
    example = {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [IGNORE, IGNORE, 3, 4, 5, 6]}
    out = truncate(example, 4, policy)
    assert out["input_ids"] == kept and out["attention_mask"] == [1] * 4
    assert truncate(example, 4, "drop") is None
    assert truncate(example, 6, "drop")["input_ids"] == [1, 2, 3, 4, 5, 6]


def test_truncation_that_leaves_no_response_drops_the_example() -> None:
    example = {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [IGNORE] * 4 + [5, 6]}
    assert truncate(example, 4, "right") is None
