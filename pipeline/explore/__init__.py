"""``cardamage explore``: a local web page to click any neuron of a real detector on real photos.

``session.Explorer`` holds one recorded ``PhotoRun`` per photo and answers with numbers; ``app`` serves
them as a JSON API and a static page (``static/``) on uvicorn, bound to 127.0.0.1 by default.
"""
