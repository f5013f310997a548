"""One module per ``params.yaml`` section, each declaring its knobs once (``KNOBS``), in the
vocabulary of ``advlab.pipeline.schema``.  A stage is checked against ``common`` + its own
section (a section may redeclare a common knob, e.g. its own ``dataset``).  Each module is a DVC
dependency of its own stage only, so declaring a new paper's knobs re-runs nothing else."""
