"""Efficient attention: layout transforms, the block-sparse kernel and the recipe base class of the attention
backends (the backends themselves are recipe methods in ``ditkit.acceleration``: svg, sta, topk, fastattn,
linear)."""
