"""`ipl ui`: a local web page (Gradio) over the same Python API as the CLI. Needs the `ui` extra (gradio).

Modules: paths (what the page may read and write), progress (a run's progress from its folder), jobs (one
adaptation at a time, in a child process), actions (the page's callbacks, no gradio), app (the Gradio page).
Only app.py imports gradio.
"""
