"""One module per `run.py` command: the command's own flags and `main(config, workdir)`.

run.py imports only the module of the command it was given, so each command
accepts its own flags (plus those of commands/common.py) and nothing else.
"""
COMMANDS = {
    'tokenizer': 'commands.tokenizer',
    'prepare': 'commands.prepare',
    'pretrain': 'commands.pretrain',
    'eval': 'commands.eval',
    'generate': 'commands.generate',
    'sft': 'commands.sft',
    'reward': 'commands.reward',
    'ppo': 'commands.ppo',
    'dpo': 'commands.dpo',
    'grpo': 'commands.grpo',
    'export': 'commands.export',
    'import': 'commands.hf_import',
    'pipeline': 'commands.pipeline',
    'launch': 'commands.launch',
    'bench': 'commands.bench',
    'describe': 'commands.describe',
    'report': 'commands.report',
    'serve': 'commands.serve',
    'chat': 'commands.chat',
}
