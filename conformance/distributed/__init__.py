"""The multi-process conformance checks: worlds of local processes, one rank each.

- ``python -m conformance.distributed --world N [--backend nccl]``: the DTensor / FSDP2 checks
  (spec/training.md, DIST-*) on N ranks (``__main__``); ``test_distributed`` runs them on gloo.
- ``harness``: one process as a rank (process group, results), a world of them, merged results.
- ``registry``: the ``@check`` decorator and the registered checks; ``checks/``: the checks.
- ``traffic``, ``expect``, ``paths``: what the checks measure, compare and switch.
- ``spawn``: starting a world of processes; ``ddp_rank``: the DDP check of ``test_training``.

The benchmark of the two split-vector paths is ``conformance.benchmarks.distributed``.
"""
