"""`genloom serve`: OpenAI-compatible completions and chat over any genloom / Hugging Face / GGUF
model, with exact token healing, streaming and continuous batching.

`engine.py` is the batcher (one thread stepping every request through the decoding protocol),
`app.py` the HTTP API (FastAPI), `text.py` turns token bytes into text a client may see,
`chat.py` renders chat templates, `schemas.py` holds the request bodies, `cli.py` the command.
"""
