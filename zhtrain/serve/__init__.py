"""serve.py's parts: the served model (model), the batching engines (batching), the HTTP app (api) and its layers:
route names and tasks (routes), request and response bodies (schemas), a router per task (generation, tasks)."""
