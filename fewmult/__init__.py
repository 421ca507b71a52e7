"""fewmult: neural networks with few multiplications (Lin et al. 2016, Hou et al. 2017)."""

__version__ = "0.1.0"
