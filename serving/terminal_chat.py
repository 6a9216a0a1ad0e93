"""`run.py chat`: a multi-turn chat in the terminal on the serving engine.

Lines starting with / are commands (/reset, /system TEXT, /temperature X, /help);
Ctrl-C stops the answer being written (the part written so far stays in the
history), Ctrl-D quits."""
import queue

from data_pipeline import chat_template
from serving.engine import Request
from serving.text_stream import TextStream

HELP = ('commands: /reset (forget the conversation), /system TEXT (set the system prompt; '
        '/system alone clears it), /temperature X (0 = greedy), /help; Ctrl-C stops an '
        'answer, Ctrl-D quits')


class TerminalChat:
  def __init__(self, served, *, temperature, system, seed, out, read_line=input):
    self.served, self.out, self.read_line = served, out, read_line
    self.temperature, self.system, self.seed = temperature, system, seed
    self.history = []

  def say(self, text='', end='\n'):
    self.out.write(text + end)
    self.out.flush()

  def command(self, line):
    """Handles a /command; False when the line is not one."""
    name, _, arg = line.strip().partition(' ')
    if name == '/reset':
      self.history = []
      self.say('[conversation reset]')
    elif name == '/system':
      self.system = arg.strip() or None
      self.say(f'[system prompt: {self.system!r}]')
    elif name == '/temperature':
      try:
        value = float(arg)
        if not 0 <= value <= 2:
          raise ValueError
      except ValueError:
        self.say(f'[/temperature takes a number in [0, 2]; got {arg.strip()!r}]')
        return True
      self.temperature = value
      self.say(f'[temperature {value}]')
    elif name == '/help':
      self.say(HELP)
    else:
      return False
    return True

  def messages(self):
    system = [{'role': 'system', 'content': self.system}] if self.system else []
    return system + self.history

  def answer(self, user_text):
    self.history.append({'role': 'user', 'content': user_text})
    ids = [int(t) for t in chat_template.encode(self.served.tokenizer, self.messages(),
                                                add_generation_prompt=True)[0]]
    room = self.served.engine.context_room(len(ids))
    if room < 1:
      self.history.pop()
      self.say(f'[the conversation ({len(ids)} tokens) fills the model\'s context of '
               f'{self.served.max_len}; /reset to start again]')
      return
    events = queue.Queue()
    request = Request(ids, max_tokens=min(room, self.served.config.serve.default_max_tokens),
                      temperature=self.temperature, seed=self.seed,
                      stop_ids=(self.served.end_of_turn, self.served.tokenizer.eos_id),
                      on_event=lambda kind, data: events.put((kind, data)))
    if self.seed is not None:
      self.seed += 1
    text = TextStream(self.served.tokenizer)
    self.served.engine.submit(request)
    try:
      while True:
        try:
          kind, data = events.get(timeout=0.1)  # short waits: Ctrl-C arrives between them
        except queue.Empty:
          continue
        if kind == 'token':
          self.say(text.add(data[0]), end='')
        elif kind == 'error':
          self.say(f'\n[error: {data}]')
          break
        elif kind == 'done':
          self.say(text.flush() + ('' if data != 'length' else ' [length limit]'))
          break
    except KeyboardInterrupt:
      request.cancel()
      self.say(text.flush() + ' [stopped]')
    self.history.append({'role': 'assistant', 'content': text.text})

  def run(self):
    self.say(f'chatting with {self.served.name} (step {self.served.step}); {HELP}')
    while True:
      try:
        line = self.read_line('> ')
      except EOFError:
        self.say('\n[bye]')
        return
      except KeyboardInterrupt:
        self.say('')
        continue
      if not line.strip():
        continue
      if line.startswith('/') and self.command(line):
        continue
      self.answer(line)
