"""The pieces of `algo: compress` (shared/compress.py), one idea per module:

prune.py     magnitude pruning with masks held through retraining (Han et al. 2015)
share.py     weight sharing by per-layer k-means, with centroids fine-tuned (Han, Mao, Dally 2016)
storage.py   the bytes of the stored model: relative sparse indices, codes, codebooks, Huffman coding
int8.py      PyTorch's post-training dynamic int8 quantization, its size and CPU speed beside fp32
"""
