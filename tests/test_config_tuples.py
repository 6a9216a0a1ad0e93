"""Tuple-valued config keys accept the README's `'(a, b)'` form."""
from configs import base
from commands.common import split_tuple_literals


def test_unquoted_tuple_literal_is_split_into_its_elements():
  config = base.get_config()
  config.data.train_files = ('(corpus/a.txt, corpus/b.jsonl)',)
  config.sft.lora_targets = ("('wq', 'wk')",)
  config.data.eval_files = ('plain.txt',)
  split_tuple_literals(config)
  assert config.data.train_files == ('corpus/a.txt', 'corpus/b.jsonl')
  assert config.sft.lora_targets == ('wq', 'wk')
  assert config.data.eval_files == ('plain.txt',)  # a single path stays as it is
