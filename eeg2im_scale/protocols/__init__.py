"""Evaluation protocols that rule out the usual leaks of EEG-to-image results (docs/protocols.md).

``eeg2im protocol {by-image,loso,held-out-classes,controls,retrieval} --config FILE`` trains what each
protocol needs through the package's own training code, evaluates it, and records the result in
``RUN_DIR/protocols.json`` (one table, chance level beside every accuracy), which
``eeg2im report`` renders.

* ``stats``: the binomial test against chance and mean ± spread (pure functions);
* ``table``: the rows of protocols.json and how invocations merge into it;
* ``plans``: which runs each protocol makes (split scheme, overrides, stages, run directory);
* ``evaluate``: EEG-classifier accuracy, zero-shot nearest-prototype accuracy, zero-shot retrieval,
  image and concept disjointness;
* ``runner``: runs a plan in-process or under a launcher, and writes the table.
"""

PROTOCOLS = ("by-image", "loso", "held-out-classes", "controls", "retrieval")
