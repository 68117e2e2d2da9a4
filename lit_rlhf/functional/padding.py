"""Padding lists of token ids into ``(batch, max_len)`` tensors with their attention masks; packing padded rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a ``(batch, max_len)`` id tensor and its attention mask (for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to a ``(batch, max_len)`` id tensor and its attention mask (for teacher forcing)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Each row's ids where ``mask`` is set: padded rows (left or right) back to token lists.

    Args:
        ids: ``(batch, length)`` padded ids.
        mask: ``(batch, length)`` attention mask (1 or true on real tokens).
    """
    return [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu())]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, seq_len)`` positions counted from each row's first real token (0 on left padding)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def length_chunks(lengths: torch.Tensor, max_chunks: int) -> list[tuple[torch.Tensor, int]]:
    """Split the rows of a padded batch into groups of similar length that together hold the fewest pad positions.

    A right-padded batch of ``n`` rows costs ``n * max(lengths)`` positions in every forward pass. Sorted by length
    and cut into contiguous groups, each group cut to its own longest row costs ``sum(rows_g * longest_g)``. The cuts
    are chosen exactly (dynamic programming over the sorted lengths); fewer groups are used when more would not
    save a position.

    Args:
        lengths: ``(batch,)`` number of real (leading) positions of each row.
        max_chunks: at most this many groups (>= 1).

    Returns:
        ``[(rows, width), ...]``: per group, the ``(group_size,)`` row indices (shortest rows first, groups in
        order of length) and the width to cut the group's rows to. Every row is in exactly one group.
    """
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
    sorted_lengths, order = torch.sort(lengths.detach().cpu(), stable=True)
    n = sorted_lengths.numel()
    if n == 0:
        return []
    sizes = sorted_lengths.tolist()
    # A group never needs to end between two rows of the same length, so groups end only where the length changes
    # (or at the last row): O(max_chunks * distinct_lengths^2) steps.
    ends = [i for i in range(1, n + 1) if i == n or sizes[i - 1] != sizes[i]]
    # best[j][i]: fewest positions for the i shortest rows in j groups; cut[j][i]: where the last group starts.
    inf = float("inf")
    best = [{0: 0.0}]
    cut: list[dict[int, int]] = [{}]
    for _ in range(min(max_chunks, len(ends))):
        previous, row, starts = best[-1], {}, {}
        for i in ends:
            for m, before in previous.items():  # the last group holds sorted rows m..i-1, as wide as row i-1
                cost = before + (i - m) * sizes[i - 1] if m < i else inf
                if cost < row.get(i, inf):
                    row[i], starts[i] = cost, m
        best.append(row)
        cut.append(starts)
    num_groups = min(range(1, len(best)), key=lambda j: (best[j].get(n, inf), j))  # fewest groups, least cost
    bounds, end = [], n
    for j in range(num_groups, 0, -1):
        start = cut[j][end]
        bounds.append((start, end))
        end = start
    order = order.to(lengths.device)
    return [(order[start:end], int(sizes[end - 1])) for start, end in reversed(bounds)]


@dataclass(frozen=True)
class PackedRows:
    """Where the real tokens of a padded batch go when packed into one row, and where they sit in right-padded rows.

    Attributes:
        token_index: ``(num_tokens,)`` indices into the flattened ``(batch * seq_len)`` batch of its real tokens,
            row by row, in order: ``input_ids.flatten()[token_index]`` is the packed row.
        position_ids: ``(num_tokens,)`` each packed token's position within its own row (0, 1, ... per row).
        slot_index: ``(num_tokens,)`` the slot of each packed token in a right-padded ``(batch, width)`` grid,
            flattened: ``grid.flatten(0, 1)[slot_index]`` reads a grid back into packed order, and
            ``index_copy`` with it fills a grid from packed tokens.
        lengths: ``(batch,)`` real tokens per row.
        width: the grid's width, the longest row.
    """

    token_index: torch.Tensor
    position_ids: torch.Tensor
    slot_index: torch.Tensor
    lengths: torch.Tensor
    width: int


def pack_rows(attention_mask: torch.Tensor) -> PackedRows:
    """The :class:`PackedRows` layout of a padded batch (left, right or mixed padding; each row's real tokens must
    be contiguous).

    Args:
        attention_mask: ``(batch, seq_len)``, 1 on real tokens.

    Returns:
        The layout; ``num_tokens = attention_mask.sum()``.
    """
    if bool((attention_mask.sum(dim=1) == 0).any()):
        raise ValueError("pack_rows needs at least one real token in every row")
    token_index, position_ids, lengths = _real_token_index(attention_mask, "pack_rows")
    width = int(lengths.max())
    slot_index = torch.arange(lengths.numel(), device=lengths.device).repeat_interleave(lengths) * width + position_ids
    return PackedRows(token_index, position_ids, slot_index, lengths, width)


def _real_token_index(mask: torch.Tensor, caller: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(token_index, position_ids, lengths)`` of a padded batch's real tokens, row by row (rows may be empty):
    their indices in the flattened batch, their positions within their row, and each row's count; ``caller`` names
    the function in the error raised when a row's real tokens are not contiguous."""
    mask = mask.bool()
    lengths = mask.sum(dim=1)
    first = mask.long().argmax(dim=1)
    last_count = mask.long().cumsum(dim=1).gather(1, (first + lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    if not bool(((last_count == lengths) | (lengths == 0)).all()):
        raise ValueError(f"{caller} needs each row's real tokens to be contiguous")
    token_index = mask.flatten().nonzero().squeeze(1)
    starts = lengths.cumsum(dim=0) - lengths
    position_ids = torch.arange(token_index.numel(), device=mask.device) - starts.repeat_interleave(lengths)
    return token_index, position_ids, lengths


@dataclass(frozen=True)
class PackedPromptRows:
    """One packed row holding each distinct prompt once and every response after it, and the ``(rows, width)`` grid of
    full ``[prompt | response]`` rows that attention runs on.

    The packed row is all prompts' real tokens (prompt by prompt), then all responses' real tokens (response by
    response). Response ``r`` continues prompt ``prompt_index[r]``: its positions continue that prompt's. Grid row
    ``r`` is ``[prompt_index[r]'s tokens | response r's tokens]``, right-padded to ``width``; a prompt token appears
    in the row of every response that continues it, and its output is read from the first of those rows.

    Attributes:
        prompt_token_index: ``(num_prompt_tokens,)`` indices of the prompts' real tokens in the flattened
            ``(num_prompts * prompt_len)`` prompt batch, in packed order.
        response_token_index: ``(num_response_tokens,)`` the same for the flattened ``(rows * response_len)``
            responses: ``response_ids.flatten()[response_token_index]`` is the packed row's tail, and ``index_copy``
            with it puts packed response outputs back into response rows.
        position_ids: ``(num_tokens,)`` each packed token's position in its full row.
        grid_index: ``(rows * width,)`` the packed token at each slot of the flattened grid, or ``num_tokens`` for
            padding (read from an appended zero row).
        output_slot: ``(num_tokens,)`` the grid slot each packed token's output is read from.
        rows: grid rows (responses).
        width: grid width, the longest ``prompt + response``.
    """

    prompt_token_index: torch.Tensor
    response_token_index: torch.Tensor
    position_ids: torch.Tensor
    grid_index: torch.Tensor
    output_slot: torch.Tensor
    rows: int
    width: int

    @property
    def num_tokens(self) -> int:
        """Tokens in the packed row: every prompt once plus every response."""
        return self.position_ids.numel()


def pack_prompt_responses(
    prompt_mask: torch.Tensor, response_mask: torch.Tensor, prompt_index: torch.Tensor
) -> PackedPromptRows:
    """The :class:`PackedPromptRows` layout of distinct prompts and the responses that continue them.

    Args:
        prompt_mask: ``(num_prompts, prompt_len)``, 1 on real tokens (any padding side, contiguous, at least one
            per prompt).
        response_mask: ``(rows, response_len)``, 1 on real tokens (contiguous; a response may be empty).
        prompt_index: ``(rows,)`` the prompt each response continues; every prompt must be continued at least once.

    Returns:
        The layout; ``num_tokens = prompt_mask.sum() + response_mask.sum()``.
    """
    num_prompts, rows = prompt_mask.size(0), response_mask.size(0)
    if prompt_index.shape != (rows,):
        raise ValueError(f"prompt_index must have shape ({rows},), got {tuple(prompt_index.shape)}")
    prompt_tokens, prompt_positions, prompt_lengths = _real_token_index(prompt_mask, "pack_prompt_responses (prompts)")
    response_tokens, response_positions, response_lengths = _real_token_index(
        response_mask, "pack_prompt_responses (responses)"
    )
    if bool((prompt_lengths == 0).any()):
        raise ValueError("every prompt needs at least one real token")
    device = prompt_mask.device
    prompt_index = prompt_index.to(device)
    row_ids = torch.arange(rows, device=device)
    first_row = torch.full((num_prompts,), rows, device=device).scatter_reduce(0, prompt_index, row_ids, "amin")
    if bool((first_row == rows).any()):
        raise ValueError("every prompt must be continued by at least one response")
    num_prompt_tokens = prompt_tokens.numel()
    num_tokens = num_prompt_tokens + response_tokens.numel()
    prompt_start = prompt_lengths.cumsum(dim=0) - prompt_lengths  # packed offset of each prompt
    response_start = num_prompt_tokens + response_lengths.cumsum(dim=0) - response_lengths
    row_prompt_len = prompt_lengths[prompt_index]  # (rows,)
    width = int((row_prompt_len + response_lengths).max()) if rows else 0
    col = torch.arange(width, device=device).unsqueeze(0)
    in_prompt = col < row_prompt_len.unsqueeze(1)
    in_response = ~in_prompt & (col < (row_prompt_len + response_lengths).unsqueeze(1))
    grid_index = torch.where(
        in_prompt,
        prompt_start[prompt_index].unsqueeze(1) + col,
        torch.where(in_response, response_start.unsqueeze(1) + col - row_prompt_len.unsqueeze(1), num_tokens),
    )
    prompt_of_token = torch.arange(num_prompts, device=device).repeat_interleave(prompt_lengths)
    row_of_token = row_ids.repeat_interleave(response_lengths)
    response_offset = row_prompt_len[row_of_token]
    output_slot = torch.cat(
        [
            first_row[prompt_of_token] * width + prompt_positions,
            row_of_token * width + response_offset + response_positions,
        ]
    )
    return PackedPromptRows(
        prompt_token_index=prompt_tokens,
        response_token_index=response_tokens,
        position_ids=torch.cat([prompt_positions, response_offset + response_positions]),
        grid_index=grid_index.flatten(),
        output_slot=output_slot,
        rows=rows,
        width=width,
    )


def response_predictors(layout: PackedPromptRows) -> torch.Tensor:
    """The packed position whose output predicts each response token of a :class:`PackedPromptRows` row.

    A token is predicted by the one before it in its full ``[prompt | response]`` row: for a response's first token,
    the last token of its prompt; for the others, the response token before it. In the grid that is the slot left of
    the token's own slot.

    Args:
        layout: from :func:`pack_prompt_responses`.

    Returns:
        ``(num_response_tokens,)`` packed positions, in the packed order of the response tokens.
    """
    num_prompt_tokens = layout.prompt_token_index.numel()
    return layout.grid_index[layout.output_slot[num_prompt_tokens:] - 1]
