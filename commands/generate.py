"""`run.py generate`: samples continuations (or chat replies) with a KV cache."""
from absl import flags

from commands import common

READS_WORKDIR_ONLY = True  # a read-only workdir is fine

CHECKPOINT, STEP = common.checkpoint_flags()
PROMPT = flags.DEFINE_multi_string('prompt', [], 'A prompt (repeat for a batch).')
MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to sample.')
TEMPERATURE = flags.DEFINE_float('temperature', 0.8, '0 = greedy.')
TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens (0 = off).')
TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus mass in (0, 1] (1 = off).')
SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
SYSTEM = flags.DEFINE_string('system', None, 'With --chat: a system message.')
QUANTIZE = common.define('enum', 'quantize', 'none', ['none', 'int8'],
                         'int8 weight-only quantization of the linear layers.')
CHAT = common.define('bool', 'chat', False, 'Wrap each prompt in the chat template and stop '
                     'at end-of-turn.')


def main(config, workdir):
  import jax
  from evaluation import sampling
  result = sampling.run_generate(
      config, workdir, PROMPT.value, checkpoint=CHECKPOINT(), step=STEP(),
      max_new_tokens=MAX_NEW_TOKENS.value, temperature=TEMPERATURE.value, top_k=TOP_K.value,
      top_p=TOP_P.value, seed=SEED.value, quantize=QUANTIZE(), chat=CHAT(),
      system=SYSTEM.value)
  if jax.process_index() == 0:
    for sample in result['samples']:
      print(f'--- {sample["prompt"]!r} ({sample["tokens"]} tokens)\n'
            + (sample['text'] if CHAT() else sample['prompt'] + sample['text']))
    if common.JSON.value:
      common.print_json(result)
