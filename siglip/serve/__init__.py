"""The HTTP service of `siglip serve`: one process holds a model and its indexes and answers the
OpenAI embeddings API (`openai.py`), clip-retrieval's back-end API (`clip_back.py`) and our own
search / classify / score / thumbnail routes (`api.py`), behind an API key, a body-size cap, body
and request deadlines and a pixel limit (`limits.py`, `images.py`), a Host allowlist and a JSON
Content-Type rule (`gate.py`), and connection limits with a deadline on headers (`connections.py`);
concurrent requests are embedded together by a bounded
queue (`batching.py`); `app.py` assembles them, `state.py` holds what is loaded once, `indexes.py`
is the one door to `siglip.index`, and `static/` is the search page. FastAPI and uvicorn come with
the optional extra: `pip install 'siglip[serve]'`.
"""
