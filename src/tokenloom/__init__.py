"""tokenloom: weave many modalities into one token stream and back."""

from tokenloom import nodes
from tokenloom.modality import ModalitySpec
from tokenloom.nodes import Node, Resources, RowError, node, read_output
from tokenloom.pipelines import ClusterSpec, Pipeline, PipelineError, RunReport
from tokenloom.registry import NODES, TOKENIZERS, Registry

__version__ = "0.1.0"


def load_pipeline(path, executor="local", **options):  # noqa: ANN001, ANN003, ANN201
    """A callable generation pipeline over a generator folder: ``tl.load_pipeline("runs/demo").generate(label=3)``.

    See `tokenloom.pipelines.generation.GenerationPipeline` (imported here on first use: it loads torch).
    """
    from tokenloom.pipelines.generation import load_pipeline as load

    return load(path, executor=executor, **options)


__all__ = [
    "NODES",
    "TOKENIZERS",
    "ClusterSpec",
    "ModalitySpec",
    "Node",
    "Pipeline",
    "PipelineError",
    "Registry",
    "Resources",
    "RowError",
    "RunReport",
    "load_pipeline",
    "node",
    "nodes",
    "read_output",
]
