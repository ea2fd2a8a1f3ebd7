"""The ``canvas demo`` main job: declare, compile, graft, train, evaluate, checkpoint, draw.

``task`` generates the procedural video-and-action data, ``backbones`` builds and calls the tiny
(or pretrained) backbones, ``pretrain`` makes and finds the pretrained tiny CogVideoX shipped in
``weights/``, ``study`` grafts, trains and evaluates one condition (loop count, frozen or not),
``pipeline`` runs the whole job (``canvas demo --task blob``). The default task lives in ``life``
(Game of Life on the token grid), ``life_pretrain`` (the shipped one-step backbone
``weights/cogvideox-life``), ``life_study`` (the conditions), ``life_runs`` (seeds, sweeps, tables
of ``benchmarks/loop_study.py``) and ``life_demo`` (the ``canvas demo`` comparison). See
``docs/demo.md`` and ``docs/looping.md``.
"""
