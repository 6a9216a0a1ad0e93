"""GRPO's prompts: JSONL `{"prompt": str | messages, "reference": ..., other keys}` or,
by default, the embedded instruction set's training items (never its held-out split).

Each kept prompt is a record {'prompt' (as given), 'messages', 'reference' (or None),
'lang' (the answer's expected language), 'columns' (every key but "prompt", for user
reward functions as TRL passes them)}. Rows of the training stream carry `prompt`
(P,), `length` (1,) and `index` (1,) into the kept records, so every process can find
any row's reference (rows are spread over processes).
"""
import numpy as np

from configs.errors import UserError
from data_pipeline import chat_formats
from data_pipeline import chat_template
from data_pipeline import embedded
from data_pipeline import jsonl
from evaluation import chat_metrics


def _answer_lang(reference, lang, messages):
  """The language an answer should be in: the reference's (a translation answers in
  the other language; the eval's language check uses the same rule), else the given
  "lang", else the prompt's own."""
  return (chat_metrics.language_of(reference or '') or lang
          or chat_metrics.language_of(messages[-1]['content']) or 'en')


def _embedded():
  out = []
  for r in chat_formats.read_chat_files(embedded.INSTRUCTION_TRAIN_FILES):
    last = max(i for i, m in enumerate(r['messages']) if m['role'] == 'assistant')
    messages = r['messages'][:last]
    columns = {k: v for k, v in r.items() if k != 'messages'}
    out.append({'prompt': messages, 'messages': messages, 'reference': r.get('reference'),
                'lang': _answer_lang(r.get('reference'), r.get('lang'), messages),
                'columns': columns})
  return out


def read(files):
  """The prompt records of `files` (JSONL), or the embedded training items."""
  if not files:
    return _embedded()
  out = []
  for path in files:
    before = len(out)
    for where, record in jsonl.records(path, 'prompt file'):
      if 'prompt' not in record:
        raise UserError(f'{where} has no "prompt"; give {{"prompt": text or messages, '
                        '"reference": answer}} lines')
      messages = chat_template.as_messages(record['prompt'], 'user', where, 'prompt')
      chat_template.check_string(record, 'reference', where, required=False)
      chat_template.check_string(record, 'lang', where, required=False)
      columns = {k: v for k, v in record.items() if k != 'prompt'}
      out.append({'prompt': record['prompt'], 'messages': messages,
                  'reference': record.get('reference'),
                  'lang': _answer_lang(record.get('reference'), record.get('lang'), messages),
                  'columns': columns, 'where': where})
    if len(out) == before:
      raise UserError(f'prompt file {path} holds no prompt (it is empty or blank); give '
                      '{"prompt": text or messages, "reference": answer} lines')
  return out


def tokenize(records, tokenizer, max_prompt_len):
  """(kept records, their rows, {'prompts', 'too_long'}): a prompt longer than
  max_prompt_len is skipped and counted; none fitting is an error."""
  kept, rows = [], []
  for record in records:
    ids = chat_template.prompt_ids(tokenizer, record['messages'])
    if len(ids) > max_prompt_len:
      continue
    row = np.zeros(max_prompt_len, np.int32)
    row[:len(ids)] = ids
    rows.append({'prompt': row, 'length': np.asarray([len(ids)], np.int32),
                 'index': np.asarray([len(kept)], np.int32)})
    kept.append(record)
  if not rows:
    raise UserError(f'no prompt fits in {max_prompt_len} tokens (data.seq_len minus '
                    'grpo.max_completion_length); raise data.seq_len or lower '
                    'grpo.max_completion_length')
  return kept, rows, {'prompts': len(records), 'too_long': len(records) - len(kept)}
