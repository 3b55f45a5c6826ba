"""mhc_ops.train: the main job, a small byte-level GPT whose residual is mHC, trained end to end.

``python -m mhc_ops.train`` trains it (``--help`` lists the options; docs/train.md describes the model,
the data, the outputs and the results); ``python -m mhc_ops.train.sample DIR`` writes text with a
trained run's model; ``python -m mhc_ops.train.plot DIR ...`` overlays the loss curves of runs.
Modules: ``data`` (byte corpus, split, batches), ``model`` (the GPT, mHC health), ``loop`` (training,
data parallelism, metrics, Ctrl-C), ``checkpoint`` (the run's files, checkpoint.pt), ``memory`` (the
memory estimate), ``sample``, ``plot``.
"""
