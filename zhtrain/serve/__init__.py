"""serve.py's parts: the served model (model), the batching engines (batching), the tasks (tasks), the app (api)."""
