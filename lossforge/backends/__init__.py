"""Backends: each turns a :class:`~lossforge.lowering.Program` into something that computes the loss.

* :mod:`.torch_closure`: a torch function (the search's and :class:`~lossforge.loss.SymbolicLoss`'s);
* :mod:`.numpy_kernel`: a numpy value-and-derivative kernel (the fast regression trainer's);
* :mod:`.python_source`: Python source over torch (the ``.py`` export);
* :mod:`.sympy_plain`: plain sympy (sign/Max/Min/Abs) with the protected operators' values (the sympy export).

Each is a loop over the Program's instructions calling the rows of :data:`lossforge.operators.INSTRUCTIONS`.
"""
