"""`run.py eval`: perplexity and bits per byte of a checkpoint on text; on a
fine-tuned workdir (or with --chat) the chat metrics instead."""
from absl import flags

from commands import common
from configs.errors import UserError

READS_WORKDIR_ONLY = True  # a read-only workdir is fine

CHECKPOINT, STEP = common.checkpoint_flags()
EVAL_FILES = flags.DEFINE_list('eval_files', [], 'Text/JSONL files (chat JSONL for chat '
                               'metrics), each reported separately (default: the held-out split).')
SEQ_LEN = flags.DEFINE_integer('seq_len', None, 'Window length (default: training\'s).')
STRIDE = flags.DEFINE_integer('stride', None, 'Window advance (default: seq_len).')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Windows (or conversations) per batch.')
MAX_BATCHES = flags.DEFINE_integer('max_batches', 0, 'Stop after this many batches (0 = all).')
QUANTIZE = common.define('enum', 'quantize', 'none', ['none', 'int8'],
                         'int8 weight-only quantization of the linear layers.')
CHAT = common.define('bool', 'chat', False, 'Chat metrics (the default on fine-tuned workdirs).')


TOKEN_NLLS = flags.DEFINE_string('token_nlls', None, 'Write each document\'s token ids and '
                                  'per-token NLLs to this JSONL (any language-model stage) '
                                  'instead of the summary metrics.')
SCORE_FILE = flags.DEFINE_string('score_file', None, 'Reward workdirs: also score each '
                                  '{"prompt", "response"} line of this JSONL.')


def stage_of(workdir):
  from engine import restore_params
  try:
    directory, step = restore_params.locate(workdir, CHECKPOINT(), STEP())
    return restore_params.read_meta(directory, step).get('stage') or 'pretrain'
  except Exception:  # the regular path reports what is wrong
    return 'pretrain'


def main(config, workdir):
  import jax
  stage = stage_of(workdir)
  if TOKEN_NLLS.value:
    from evaluation import token_nlls
    summary = token_nlls.run_token_nlls(config, workdir, TOKEN_NLLS.value,
                                        checkpoint=CHECKPOINT(), step=STEP(),
                                        eval_files=EVAL_FILES.value, quantize=QUANTIZE())
    if jax.process_index() == 0:
      print(f'{summary["documents"]} documents, {summary["tokens"]} tokens, total NLL '
            f'{summary["nll"]:.4f} (step {summary["step"]}) → {summary["token_nlls"]}')
      if common.JSON.value:
        common.print_json(summary)
    return
  if SCORE_FILE.value and stage != 'reward':
    raise UserError(f'--score_file scores responses with a reward model, but this checkpoint '
                    f'is of the {stage} stage; give the --workdir of a `run.py reward` run')
  if stage == 'reward':
    from evaluation import reward_eval
    summary = reward_eval.run_reward_eval(config, workdir, checkpoint=CHECKPOINT(), step=STEP(),
                                          eval_files=EVAL_FILES.value,
                                          batch_size=BATCH_SIZE.value,
                                          score_file=SCORE_FILE.value)
    text = reward_eval.format_summary(summary)
  elif CHAT() or stage != 'pretrain':
    from evaluation import chat_eval
    summary = chat_eval.run_chat_eval(config, workdir, checkpoint=CHECKPOINT(),
                                      step=STEP(), batch_size=BATCH_SIZE.value,
                                      eval_files=() if stage == 'dpo' else EVAL_FILES.value)
    text = chat_eval.format_summary(summary)
    if stage == 'dpo':  # --eval_files are preference pairs here
      from evaluation import reward_eval
      result = reward_eval.dpo_accuracy(config, workdir, CHECKPOINT(), STEP(), EVAL_FILES.value,
                                        BATCH_SIZE.value)
      summary['preference'] = result
      text += (f'\nimplicit-reward accuracy {result["accuracy"]:.3f} on {result["pairs"]} '
               'held-out pairs (' + ', '.join(f'{k} {v:.3f}' for k, v in
                                              result['accuracy_by_kind'].items()) + ')')
  else:
    from evaluation import evaluate
    summary = evaluate.run_eval(
        config, workdir, checkpoint=CHECKPOINT(), step=STEP(),
        eval_files=EVAL_FILES.value, seq_len=SEQ_LEN.value, stride=STRIDE.value,
        batch_size=BATCH_SIZE.value, max_batches=MAX_BATCHES.value, quantize=QUANTIZE())
    text = evaluate.format_summary(summary)
  if jax.process_index() == 0:
    print(text)
    if common.JSON.value:
      common.print_json(summary)
