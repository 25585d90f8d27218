"""`atoll` sub-commands implemented by the trainer package (sample; `atoll run` lives in
atoll.commands.run, above both trainer and operator).

Each module follows atoll.cli's contract: HELP, add_arguments(parser), main(args) -> int,
with heavy imports (torch, diffusers) inside main.
"""
