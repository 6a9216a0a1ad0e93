"""`run.py export`: a checkpoint → a Hugging Face LLaMA directory."""
from absl import flags

from commands import common

READS_WORKDIR_ONLY = True  # a read-only workdir is fine

CHECKPOINT, STEP = common.checkpoint_flags()
OUT = flags.DEFINE_string('out', None, 'The Hugging Face directory to write.')
OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out.')
PARITY = common.define('bool', 'parity', True, 'Compare logits with transformers.')


def main(config, workdir):
  from interop import hf_export
  result = hf_export.run_export(config, workdir, OUT.value, checkpoint=CHECKPOINT(),
                                step=STEP(), overwrite=OVERWRITE.value, parity=PARITY())
  print(f'export: step {result["step"]} written to {result["out"]} ({result["shards"]} '
        f'safetensors file(s), {result["seconds"]:.1f} s)')
  if common.JSON.value:
    common.print_json(result)
