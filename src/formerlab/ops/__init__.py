"""Pure tensor functions (no modules, no configs): masks, rotary embeddings, sampling."""
