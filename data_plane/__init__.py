"""The data plane: runs, checkpoints, events, tools and memory, executed by Celery workers."""
