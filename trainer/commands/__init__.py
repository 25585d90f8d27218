"""`atoll` sub-commands implemented by the trainer package (run --local, sample).

Each module follows atoll.cli's contract: HELP, add_arguments(parser), main(args) -> int,
with heavy imports (torch, diffusers) inside main.
"""
