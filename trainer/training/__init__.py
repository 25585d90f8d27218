"""The shared training machinery of the expert and router stages.

One loop (loop.py) with its parts: the batch split (batching), data order and per-example
noise (data_order), AdamW with warm-up (optim), checkpoint files (state), data parallelism
(distributed), the heartbeat writer (pulse) and the stage runner (runner). Stages supply a
TrainingTask (task.py); nothing here knows about experts or routers.
"""
