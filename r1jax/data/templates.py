"""Prompt templates. The R1-Zero template is Table 1 of DeepSeek-R1
(arXiv 2501.12948), word for word; the question replaces `{question}`."""

R1_ZERO_TEMPLATE = (
    'A conversation between User and Assistant. The user asks a question, and '
    'the Assistant solves it. The assistant first thinks about the reasoning '
    'process in the mind and then provides the user with the answer. The '
    'reasoning process and answer are enclosed within <think> </think> and '
    '<answer> </answer> tags, respectively, i.e., <think> reasoning process '
    'here </think> <answer> answer here </answer>. User: {question}. Assistant:')

# Tags the format reward checks and that a trained tokenizer keeps whole.
TAGS = ('<think>', '</think>', '<answer>', '</answer>')


def r1_zero_prompt(question: str) -> str:
  return R1_ZERO_TEMPLATE.format(question=question)

# Appended to a prompt, this forces an answer without a chain of thought (the
# base's "no thinking" accuracy shows how much the task needs the steps).
NO_THINKING = ' <think> </think> <answer>'
