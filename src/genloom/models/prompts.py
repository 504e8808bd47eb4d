"""Right-padded prompts for a cached decoder's `start`: checks, left truncation, left packing.

Letters: B rows, T width of the padded prompts, W packed width (the longest prompt).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from genloom.errors import UserError


def check_prompts(
    input_ids: Tensor, lengths: Tensor | Sequence[int] | None, segment_ids: Tensor | None = None, *,
    max_new_tokens: int, max_len: int | None, truncate: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate right-padded prompts for `start`; left-truncate them when `truncate` is set.

    Args:
        input_ids: (B, T) right-padded token ids.
        lengths: (B,) real lengths, or None for "all T".
        segment_ids: (B, T) or None, truncated along with the ids.
        max_new_tokens: tokens that will be generated after the prompt.
        max_len: the model's context (None: unlimited).
        truncate: keep each prompt's last max_len - max_new_tokens tokens instead of raising.

    Returns:
        (input_ids, lengths (B,) long, segment_ids), truncated if asked.

    Raises:
        UserError: no prompts, an empty prompt, bad lengths, or a prompt too long for the context.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise UserError("no prompts to decode (expected a non-empty (B, T) batch of token ids)")
    b, t = input_ids.shape
    dev = input_ids.device
    lengths = torch.as_tensor(t if lengths is None else lengths, dtype=torch.long, device=dev).reshape(-1)
    lengths = lengths.expand(b) if lengths.numel() == 1 else lengths
    if lengths.numel() != b:
        raise UserError(f"lengths has {lengths.numel()} entries for {b} prompts")
    if bool((lengths < 1).any()):
        raise UserError(f"prompt {int((lengths < 1).nonzero()[0])} is empty (every prompt needs at least one token)")
    if bool((lengths > t).any()):
        raise UserError(f"a prompt length exceeds the width of input_ids ({t})")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_len is None:
        return input_ids, lengths, segment_ids
    limit = max_len - max_new_tokens
    longest = int(lengths.max())
    if longest > limit:
        if not truncate or limit < 1:
            raise UserError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the model's context "
                f"of {max_len} tokens" + ("; shorten it or ask for left truncation" if limit >= 1 else ""))
        drop = (lengths - limit).clamp(min=0)  # (B,) tokens cut from each row's left
        src = (torch.arange(limit, device=dev)[None] + drop[:, None]).clamp(max=t - 1)  # (B, limit)
        input_ids = input_ids.gather(1, src)
        segment_ids = None if segment_ids is None else segment_ids.gather(1, src)
        lengths = lengths - drop
    return input_ids, lengths, segment_ids


def left_pack(input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move each row's `lengths[b]` tokens to the right end of a window of width W = max(lengths).

    Returns:
        packed (B, W) ids (0 at padding), positions (B, W) (column - offset, 0 at padding; also the
        source column of each packed column), key_valid (B, W) bool, offsets (B,) padding per row.
    """
    width = int(lengths.max())
    offsets = width - lengths  # (B,)
    col = torch.arange(width, device=input_ids.device)[None]  # (1, W)
    key_valid = col >= offsets[:, None]  # (B, W)
    positions = (col - offsets[:, None]).clamp(min=0)  # (B, W)
    packed = input_ids[:, :width].gather(1, positions).masked_fill(~key_valid, 0)  # (B, W)
    return packed, positions, key_valid, offsets
