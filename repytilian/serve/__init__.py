"""`repytilian serve`: a web playground and an OpenAI-compatible API for the models on this machine.

An ASGI app (Starlette) on uvicorn, both in the optional extra `pip install 'repytilian[serve]'`.
Generation is the library's engine (engine.py), the same as every other surface's: each model's
requests decode together in its running batch (batch_loop.py), in a thread off the event loop;
each model folder is loaded once and shared.
"""
