"""Shard builders: one source adapter per dataset feeding one shared writer (`python -m data_prep build`).

Adapters (pexels, ucf101, msrvtt, camera_pans) each expose ``SPLITS``,
``DEFAULT_SHARD_SIZE``, ``DEFAULT_CLIPS_PER_VIDEO``, ``add_arguments(parser)``
and ``records(args) -> {split: [Record]}``; ``data_prep.writer`` turns records
into shards. From dv, only ``dv.data`` and ``dv.errors`` are imported.
"""
