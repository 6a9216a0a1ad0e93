"""`run.py chat`: talk to a model in the terminal (multi-turn, streaming), on the
same continuous-batching engine as `run.py serve`."""
import signal
import sys

from commands import common
from configs.errors import UserError

READS_WORKDIR_ONLY = True  # a read-only workdir is fine
ON_STOP = 'the chat ended; start it again to talk (the conversation is not kept)'

CHECKPOINT, STEP = common.checkpoint_flags()
QUANTIZE = common.define('enum', 'quantize', 'none', ['none', 'int8'],
                         'int8 weight-only quantization of the linear layers.')
TEMPERATURE = common.define('float', 'temperature', 0.8, '0 = greedy.')
SYSTEM = common.define('string', 'system', None, 'A system message.')
SEED = common.define('integer', 'seed', None, 'Sampling seed (default: random).')


def main(config, workdir):
  from serving import loader
  from serving import terminal_chat
  if not 0 <= TEMPERATURE() <= 2:
    raise UserError(f'--temperature={TEMPERATURE()} must be in [0, 2] (0 = greedy)')
  config.serve.max_batch = 1  # one conversation: one slot
  served = loader.load(config, workdir, step=STEP(), checkpoint=CHECKPOINT(),
                       quantize=QUANTIZE())
  if not served.has_chat_tokens:
    raise UserError('this tokenizer has no chat tokens; `run.py chat` needs a tokenizer '
                    'trained by `python run.py tokenizer` (use `run.py generate` otherwise)')
  served.engine.start()
  # Ctrl-C stops the answer being written, not the chat (run.py's handlers make SIGINT
  # end a command): here it is Python's KeyboardInterrupt again; SIGTERM still ends it.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    terminal_chat.TerminalChat(served, temperature=TEMPERATURE(), system=SYSTEM(),
                               seed=SEED(), out=sys.stdout).run()
  finally:
    served.engine.stop()
