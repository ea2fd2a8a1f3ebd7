"""The ``canvas demo`` main job: declare, compile, graft, train, evaluate, checkpoint, draw.

``task`` generates the procedural video-and-action data, ``backbones`` builds and calls the tiny
(or pretrained) backbones, ``pretrain`` makes and finds the pretrained tiny CogVideoX shipped in
``weights/``, ``study`` grafts, trains and evaluates one condition (loop count, frozen or not),
``pipeline`` runs the whole job. See ``docs/demo.md`` and ``docs/looping.md``.
"""
