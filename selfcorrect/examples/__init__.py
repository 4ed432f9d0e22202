"""Examples that ship with the package (``--task examples/custom_task.py:make_task`` finds them from any directory)."""
