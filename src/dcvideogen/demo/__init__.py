"""`dcvg demo`: a local Gradio page over the package (the `demo` extra).

`compare.py` and `generation.py` hold what the page computes, as functions that run without a browser;
`app.py` lays the page out on top of them. A top-level UI layer: it may import evaluation, metrics,
pipelines, video and models; only `cli/demo.py` imports it.
"""
