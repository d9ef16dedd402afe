"""Instruction-tuning data: instances formatted from task datasets (instances), chat
transcripts (chat) and synthetic generators (synthetic), tokenized into rows whose loss falls
on the responses only (rows), and named for configs (datasets). seqio tasks live in
``lm.instruct.seqio_tasks``, which imports TensorFlow and so is not imported here."""
from lm.instruct.chat import CHAT_TEMPLATE, ChatTemplate, chat_prompt, chat_prompt_tokens, format_chat
from lm.instruct.datasets import instruction_dataset
from lm.instruct.instances import (INSTRUCTION_TEMPLATE, QA_TEMPLATE, Instance, TaskTemplate,
                                   classification_template, format_task_row, qa_template)
from lm.instruct.rows import (RowReport, UnrepresentableTextError, batch_at, batches,
                              encode_instance, instruction_rows, unrepresentable_characters)
from lm.instruct.synthetic import (arithmetic_instances, arithmetic_split, rouge_l, self_instruct,
                                   self_instruct_with_report)

__all__ = [
    "CHAT_TEMPLATE", "ChatTemplate", "chat_prompt", "chat_prompt_tokens", "format_chat",
    "instruction_dataset", "INSTRUCTION_TEMPLATE", "QA_TEMPLATE", "Instance", "TaskTemplate",
    "classification_template", "format_task_row", "qa_template", "RowReport",
    "UnrepresentableTextError", "batch_at", "batches", "encode_instance", "instruction_rows",
    "unrepresentable_characters", "arithmetic_instances", "arithmetic_split", "rouge_l",
    "self_instruct", "self_instruct_with_report",
]
