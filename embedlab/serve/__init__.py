"""``embedlab serve``: every model side by side in a local web page and a JSON API (app.py: HTTP; engine.py:
queries)."""
