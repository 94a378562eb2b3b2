"""The size in bytes of a pruned, weight-shared model as Deep Compression stores it (Han, Mao, Dally 2016,
Sections 2 and 4), counted exactly rather than written out.

A pruned layer is stored as two streams of equal length, one entry per kept weight, read in the order of the
flattened weight:
- the index stream: the gap from the previous kept position (the first from position -1), in `index_bits`.
  Gaps run 1 .. 2**index_bits - 1; a longer gap is bridged by filler entries, each stored as the value 0 and
  standing for an advance of 2**index_bits - 1 positions with no weight there. (The paper: "when the index
  difference exceeds the bound, we add a filler zero".) A gap g thus costs (g - 1) // (2**index_bits - 1)
  fillers.
- the code stream: one code per entry in `code_bits` (a filler, like the paper's filler zero, takes a code
  slot too; we give it code 0), indexing the layer's codebook of 2**code_bits fp32 centroids. A layer
  without weight sharing stores its fp32 values instead: 32-bit "codes" and no codebook.
Everything else (biases, any parameter or buffer of a layer that is not pruned) is stored as it is, fp32.
Each stream of each layer is padded to whole bytes.

With Huffman coding (Section 4) each stream of each layer gets its own Huffman code over its symbols
(gaps, codes); we count the coded bits exactly and, as the paper does, not the tables (a few hundred bytes).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Optional

import torch
import torch.nn as nn

FP32_BYTES = 4


def sparse_streams(
    mask: torch.Tensor, codes: Optional[torch.Tensor], index_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(index stream, code stream), int64 (E,) each, E = kept weights + fillers. `codes` (kept,) in the order of
    the mask's set positions, or None for unshared weights (then the code stream is all zeros: only its length
    counts)."""
    positions = torch.nonzero(mask.flatten()).flatten().cpu()  # (kept,)
    gaps = torch.diff(positions, prepend=torch.tensor([-1]))
    longest = 2**index_bits - 1
    fillers = (gaps - 1) // longest
    real = torch.cumsum(fillers + 1, 0) - 1  # where each kept weight's entry lands in the stream
    entries = int(real[-1]) + 1 if len(real) else 0
    index_stream = torch.zeros(entries, dtype=torch.int64)
    index_stream[real] = gaps - fillers * longest
    code_stream = torch.zeros(entries, dtype=torch.int64)
    if codes is not None:
        code_stream[real] = codes.cpu()
    return index_stream, code_stream


def huffman_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Code length in bits of each symbol of a Huffman code for these symbol counts (counts > 0). A lone
    symbol still takes 1 bit."""
    if len(counts) == 1:
        return {symbol: 1 for symbol in counts}
    order = itertools.count()  # breaks ties between equal counts without comparing the lists
    heap = [(count, next(order), [symbol]) for symbol, count in counts.items()]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    while len(heap) > 1:
        count_a, _, symbols_a = heapq.heappop(heap)
        count_b, _, symbols_b = heapq.heappop(heap)
        for symbol in symbols_a + symbols_b:  # every symbol under the merged node is one bit deeper
            lengths[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, next(order), symbols_a + symbols_b))
    return lengths


def huffman_bits(symbols: torch.Tensor) -> int:
    """Bits of a stream of integer symbols (E,) under its own Huffman code."""
    if len(symbols) == 0:
        return 0
    values, counts = torch.unique(symbols, return_counts=True)
    counts_of = dict(zip(values.tolist(), counts.tolist()))
    lengths = huffman_lengths(counts_of)
    return sum(counts_of[s] * lengths[s] for s in counts_of)


def layer_bytes(
    mask: torch.Tensor, codes: Optional[torch.Tensor], code_bits: int, index_bits: int, huffman: bool
) -> dict:
    """Bytes of one pruned layer's weight: {"entries", "fillers", "index", "codes", "codebook", "total"}, with
    the two streams Huffman-coded when `huffman`. `codes` None: unshared fp32 values (code_bits must be 32)."""
    index_stream, code_stream = sparse_streams(mask, codes, index_bits)
    entries = len(index_stream)
    if huffman:
        index = math.ceil(huffman_bits(index_stream) / 8)
        coded = math.ceil((huffman_bits(code_stream) if codes is not None else entries * code_bits) / 8)
    else:
        index, coded = math.ceil(entries * index_bits / 8), math.ceil(entries * code_bits / 8)
    codebook = FP32_BYTES * 2**code_bits if codes is not None else 0
    return {
        "entries": entries,
        "fillers": entries - int(mask.sum()),
        "index": index,
        "codes": coded,
        "codebook": codebook,
        "total": index + coded + codebook,
    }


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's state (parameters and buffers) as stored dense: fp32 for the LeNets."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def compressed_bytes(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    codes: dict[str, torch.Tensor],
    code_bits: dict[str, int],
    index_bits: dict[str, int],
    huffman: bool,
) -> tuple[int, dict[str, dict]]:
    """(total bytes, {layer: layer_bytes}) of the model with the weights of the `masks`' layers stored sparse;
    `codes` and `code_bits` for the layers whose weights are shared (the others store fp32 values), everything
    else dense."""
    layers = {
        name: layer_bytes(mask, codes.get(name), code_bits.get(name, 32), index_bits[name], huffman)
        for name, mask in masks.items()
    }
    sparse_keys = {f"{name}.weight" for name in masks}
    rest = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k not in sparse_keys)
    return rest + sum(layer["total"] for layer in layers.values()), layers
