"""Decoder models (Qwen2/2.5, Llama 3) as an explicit list of operators, weight loading, tokenizer.

Owns the math of one forward pass and where weights come from. Must not know about the
scheduler, the engine, the simulator, or how KV blocks are laid out (attention is a callable).
"""

from flowprefill.model.decoder import Attend, Decoder, OpKind
from flowprefill.model.loading import config_from_hf, load_model
from flowprefill.model.tokenizer import Tokenizer, load_tokenizer
from flowprefill.model.weights import LayerWeights, ModelWeights, random_weights

__all__ = [
    "Attend",
    "Decoder",
    "LayerWeights",
    "ModelWeights",
    "OpKind",
    "Tokenizer",
    "config_from_hf",
    "load_model",
    "load_tokenizer",
    "random_weights",
]
