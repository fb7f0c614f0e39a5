"""hskd: knowledge distillation for BERT-family models.

The Python API mirrors the command line: :func:`hskd.pipeline.finetune`,
:func:`hskd.pipeline.distill`, :func:`hskd.pipeline.evaluate` and :func:`hskd.pipeline.run`.
What the student learns from is declared by a :class:`hskd.knowledge.KnowledgeSpec`.
"""

from hskd.errors import HskdError

__version__ = "0.1.0"
__all__ = ["HskdError", "__version__"]
