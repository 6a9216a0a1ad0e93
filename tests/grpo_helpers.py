"""What the GRPO test files share: the tiny GRPO flags, the start workdir (a tiny
pretrain, in the SFT role: its tokenizer has the chat tokens) and the per-step lines."""
from tests.cli_helpers import read_records, tiny_pretrain

# 4 prompts × G = 4 answers of at most 8 tokens a step; a pretrained-only model rarely
# matches, so most groups are all equal (dynamic sampling has work) and the answer's
# language (zh or en, by chance) gives the others a signal.
GRPO = ['--config=configs/grpo_tiny.py', '--config.train.batch_size=16',
        '--config.grpo.num_generations=4', '--config.grpo.max_completion_length=8',
        '--config.train.peak_tflops=1', '--config.grpo.rewards=f1:1,language:1,no_repeat:0.5',
        '--config.grpo.beta=0', '--config.grpo.temperature=1']  # TRL's defaults, not tiny's

_START = {}


def grpo_start(tiny_workdir, tmp_path_factory):
  """{'p': the tiny pretrain workdir, 'root': a folder for the tests' workdirs}; built
  once per session."""
  if tiny_workdir not in _START:
    root = tmp_path_factory.mktemp('grpo_stage')
    _START[tiny_workdir] = {'p': str(tiny_pretrain(tiny_workdir, root / 'pretrain')),
                            'root': root}
  return dict(_START[tiny_workdir])


def by_step(workdir):
  """{step: record} of the GRPO step lines of WORKDIR/metrics.jsonl."""
  return {r['step']: r for r in read_records(workdir) if 'frac_reward_zero_std' in r}
