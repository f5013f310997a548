"""advlab: the thin helper library of the Adversarial Robustness Workbook.

One module per concern -- ``data``, ``models``, ``attacks``, ``training``, ``evaluation``,
``claims``, ``plots``, ``widgets``, ``params``, ``notebook``, ``run`` -- plus one short module per
paper's own method.  Import submodules explicitly (``from advlab import attacks``).
"""
__version__ = "0.1.0"
