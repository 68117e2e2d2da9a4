import itertools

import pytest
import torch

from lit_rlhf.functional.padding import (
    length_chunks,
    pack_prompt_responses,
    pack_rows,
    pad_left,
    pad_right,
    response_predictors,
)


def positions(chunks):
    return sum(len(rows) * width for rows, width in chunks)


def test_pad_left_and_right_put_the_ids_at_either_end():
    ids, mask = pad_left([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_right([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]


def test_length_chunks_on_a_hand_computed_batch():
    lengths = torch.tensor([9, 2, 9, 3, 2, 9])
    # One pass: 6 rows x 9 = 54 positions. Two groups: {2, 2, 3} cut to 3 and {9, 9, 9} cut to 9 = 9 + 27 = 36
    # (cutting after the two 2s gives 2*2 + 4*9 = 40, after the 3 is the only better place).
    (short, short_width), (long, long_width) = length_chunks(lengths, 2)
    assert short.tolist() == [1, 4, 3] and short_width == 3
    assert long.tolist() == [0, 2, 5] and long_width == 9
    # Three groups: {2, 2} x 2, {3} x 3, {9, 9, 9} x 9 = 4 + 3 + 27 = 34.
    assert [(rows.tolist(), width) for rows, width in length_chunks(lengths, 3)] == [
        ([1, 4], 2),
        ([3], 3),
        ([0, 2, 5], 9),
    ]
    ((rows, width),) = length_chunks(lengths, 1)
    assert sorted(rows.tolist()) == list(range(6)) and width == 9


def test_length_chunks_uses_no_more_groups_than_save_positions():
    assert len(length_chunks(torch.tensor([4, 4, 4]), 3)) == 1  # equal lengths: nothing to save
    assert [w for _, w in length_chunks(torch.tensor([2, 9, 2, 9]), 4)] == [2, 9]
    assert length_chunks(torch.tensor([], dtype=torch.long), 2) == []
    with pytest.raises(ValueError, match="max_chunks"):
        length_chunks(torch.tensor([1]), 0)


@pytest.mark.parametrize("seed", range(5))
def test_length_chunks_finds_the_fewest_positions_of_any_cut(seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (9,), generator=generator)
    for max_chunks in (1, 2, 3):
        chunks = length_chunks(lengths, max_chunks)
        rows = torch.cat([r for r, _ in chunks])
        assert sorted(rows.tolist()) == list(range(9))  # every row exactly once
        assert all(int(lengths[r].max()) == w for r, w in chunks)  # each group as wide as its longest row
        ordered = sorted(lengths.tolist())
        brute = min(  # every way to cut the sorted rows into at most max_chunks groups
            sum((b - a) * ordered[b - 1] for a, b in zip((0, *cuts), (*cuts, 9)))
            for k in range(max_chunks)
            for cuts in itertools.combinations(range(1, 9), k)
        )
        assert positions(chunks) == brute


def test_pack_rows_on_a_hand_computed_batch():
    # Row 0 right-padded (3 tokens), row 1 left-padded (2 tokens), row 2 full (4 tokens).
    layout = pack_rows(torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]]))
    assert layout.token_index.tolist() == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert layout.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert layout.lengths.tolist() == [3, 2, 4] and layout.width == 4
    # The right-padded 3 x 4 grid: row 0 in slots 0-2, row 1 in slots 4-5, row 2 in slots 8-11.
    assert layout.slot_index.tolist() == [0, 1, 2, 4, 5, 8, 9, 10, 11]
    ids = torch.tensor([[5, 6, 7, 0], [0, 0, 8, 9], [1, 2, 3, 4]])
    packed = ids.flatten()[layout.token_index]
    assert packed.tolist() == [5, 6, 7, 8, 9, 1, 2, 3, 4]
    grid = torch.zeros(3 * 4, dtype=torch.long).index_copy(0, layout.slot_index, packed).view(3, 4)
    assert grid.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]]


def test_pack_rows_refuses_empty_and_gapped_rows():
    with pytest.raises(ValueError, match="at least one real token"):
        pack_rows(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="contiguous"):
        pack_rows(torch.tensor([[1, 0, 1], [1, 1, 1]]))


def test_pack_prompt_responses_on_a_hand_computed_batch():
    # Prompt 0 left-padded (2 tokens), prompt 1 full (3); four responses continue prompts 1, 0, 1, 0, the last empty.
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0]])
    layout = pack_prompt_responses(prompt_mask, response_mask, torch.tensor([1, 0, 1, 0]))
    # Packed: prompt 0 (2), prompt 1 (3), then responses 0 (2), 1 (1), 2 (1): 9 tokens.
    assert layout.prompt_token_index.tolist() == [1, 2, 3, 4, 5]
    assert layout.response_token_index.tolist() == [0, 1, 2, 4]
    assert layout.num_tokens == 9
    # Responses continue their prompt's positions: response 0 after 3 prompt tokens, response 1 after 2.
    assert layout.position_ids.tolist() == [0, 1, 0, 1, 2, 3, 4, 2, 3]
    # Grid rows [prompt | response], width max(3 + 2, 2 + 1, 3 + 1, 2 + 0) = 5; padding reads slot 9 (zeros).
    assert layout.rows == 4 and layout.width == 5
    assert layout.grid_index.view(4, 5).tolist() == [
        [2, 3, 4, 5, 6],
        [0, 1, 7, 9, 9],
        [2, 3, 4, 8, 9],
        [0, 1, 9, 9, 9],
    ]
    # Prompt 0's outputs come from row 1 (its first response), prompt 1's from row 0.
    assert layout.output_slot.tolist() == [5, 6, 0, 1, 2, 3, 4, 7, 13]
    # Every packed token's output slot holds that token in the grid.
    assert torch.equal(layout.grid_index[layout.output_slot], torch.arange(9))
    # Who predicts each response token (packed 5-8): response 0's first token (5) prompt 1's last token (4), its
    # second (6) the token 5; response 1's only token (7) prompt 0's last token (1); response 2's (8) token 4.
    assert response_predictors(layout).tolist() == [4, 5, 1, 4]


def test_pack_prompt_responses_refuses_what_it_cannot_lay_out():
    prompts, responses = torch.tensor([[1, 1], [0, 1]]), torch.tensor([[1, 0], [1, 1]])
    with pytest.raises(ValueError, match="continued by at least one response"):
        pack_prompt_responses(prompts, responses, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="at least one real token"):
        pack_prompt_responses(torch.tensor([[1, 1], [0, 0]]), responses, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="contiguous"):
        pack_prompt_responses(prompts, torch.tensor([[1, 0, 1], [1, 1, 0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        pack_prompt_responses(prompts, responses, torch.tensor([0, 1, 1]))
