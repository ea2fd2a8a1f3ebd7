"""The ``canvas demo`` main job: declare, compile, graft, train, evaluate, checkpoint, draw.

``task`` generates the procedural video-and-action data, ``backbones`` builds and calls the tiny
(or pretrained) backbones, ``pipeline`` runs the whole job. See ``docs/demo.md``.
"""
