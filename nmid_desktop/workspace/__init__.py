"""The application layer: every use case the window and the ``nmid`` command share, without Qt.

After napari's ``components/`` (whose ``ViewerModel`` holds the viewer's state and use cases and is
tested without a display): opening a library (:mod:`.library`), the engine of one open library
with its queries and label changes (:mod:`.engine`), what the window displays of an image
(:mod:`.display`), batch classification (:mod:`.batch`), model tasks (:mod:`.model_tasks`),
training (:mod:`.training`), export (:mod:`.export`) and the browser's rows and review queues
(:mod:`.browse`). ``qt/`` keeps widgets, Qt models and the worker plumbing only; ``commands/``
call the same functions, so a use case is written once.
"""
