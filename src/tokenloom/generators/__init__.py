"""The shared AR transformer: vocabulary layout and packing, backbone + modality heads, sampling, decoding.

layout = VocabularyLayout([ModalityVocab("label", 10, tokens_per_segment=1), ModalityVocab("image", 16, shape=(4, 4))])
model = LoomModel(layout, {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, ...})
out = generate(model, [[("label", [3])]], segments=[("image", 16)], sampler=Sampler([TopK(8)]), cfg=CFG(2.0))
out.segments()  # per row: [Segment("label", [3]), Segment("image", 4x4 local ids)]
"""

from tokenloom.generators.decoding import DecodingState, DecodingStrategy, GenerationOutput, NextToken, generate
from tokenloom.generators.layout import SPECIAL, GrammarState, ModalityVocab, VocabularyLayout
from tokenloom.generators.model import LoomModel, LoomOutput
from tokenloom.generators.next_scale import NextScaleModel, NextScaleOutput, generate_next_scale, next_scale_loss
from tokenloom.generators.packing import PackedBatch, PackedSequence, Segment
from tokenloom.generators.parallel import (
    ParallelDecoding,
    ParallelModel,
    ParallelState,
    generate_par,
    par_loss,
    par_order,
    par_to_raster,
    raster_to_par,
)
from tokenloom.generators.sampling import CFG, Greedy, LogitsProcessor, Sampler, Temperature, TopK, TopP
from tokenloom.generators.speculative import Lantern, SpeculativeJacobi
from tokenloom.generators.training import TokenShards, train, train_distributed

__all__ = [
    "CFG",
    "SPECIAL",
    "DecodingState",
    "DecodingStrategy",
    "GenerationOutput",
    "GrammarState",
    "Greedy",
    "Lantern",
    "LogitsProcessor",
    "LoomModel",
    "LoomOutput",
    "ModalityVocab",
    "NextScaleModel",
    "NextScaleOutput",
    "NextToken",
    "ParallelDecoding",
    "ParallelModel",
    "ParallelState",
    "PackedBatch",
    "PackedSequence",
    "Sampler",
    "Segment",
    "SpeculativeJacobi",
    "Temperature",
    "TokenShards",
    "TopK",
    "TopP",
    "VocabularyLayout",
    "generate",
    "generate_next_scale",
    "generate_par",
    "next_scale_loss",
    "par_loss",
    "par_order",
    "par_to_raster",
    "raster_to_par",
    "train",
    "train_distributed",
]
