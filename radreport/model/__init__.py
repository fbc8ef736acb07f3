"""Grounded report model: ViT encoder, cross-attending decoder, tokenizer, decoding, data.

Importing this package imports nothing heavy: the PyTorch modules (``model``, ``train``,
``decode``, ``export``, ``data``) are for training and export only, while ``report``,
``onnx_runtime``, ``grounding`` and ``tokenizer`` run without torch in the serving stack.
"""
