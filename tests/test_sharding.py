"""FSDP2 helpers of lit_rlhf.sharding on two CPU processes (gloo): sharded models compute what whole ones do."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_rlhf.errors import ConfigError
from lit_rlhf.strategies import check_strategy_name, fsdp_param_dtype


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _models(seed: int = 0):
    from transformers import LlamaForSequenceClassification

    from lit_rlhf.models import build_word_tokenizer
    from lit_rlhf.models.tiny import build_tiny_llama
    from tests.conftest import TINY_MODEL_CONFIG

    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    policy = build_tiny_llama(tokenizer, TINY_MODEL_CONFIG).eval()
    config = policy.config.__class__.from_dict({**policy.config.to_dict(), "num_labels": 1})
    scorer = LlamaForSequenceClassification(config).eval()
    return tokenizer, policy, scorer


def _prompts(tokenizer, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts, a different number and length on each rank."""
    from lit_rlhf.functional.padding import pad_left

    generator = torch.Generator().manual_seed(10 + rank)
    lengths = [3 + i + 2 * rank for i in range(2 + rank)]
    rows = [torch.randint(4, len(tokenizer), (n,), generator=generator).tolist() for n in lengths]
    return pad_left(rows, tokenizer.pad_token_id)


def _check_on_two_ranks(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        from lit_rlhf.generation import generate
        from lit_rlhf.models.scoring import sequence_scores
        from lit_rlhf.sharding import (
            full_state_dict,
            full_tensor,
            gathered_for_sampling,
            is_sharded,
            shard_model,
            sharded_bytes,
        )

        tokenizer, policy, scorer = _models()
        whole_state = {k: v.clone() for k, v in policy.state_dict().items()}
        ids, mask = _prompts(tokenizer, rank)
        # Whole-model results on this rank's prompts, to compare with the sharded ones.
        expected_logits = policy(input_ids=ids, attention_mask=mask).logits
        expected_scores = sequence_scores(scorer, ids, mask)
        first = generate(policy, ids, mask, max_new_tokens=1, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id)
        # Rank 1 stops at its first token (its EOS is the token greedy decoding picks first); rank 0 runs 6 steps.
        eos = int(first.response_ids[0, 0]) if rank == 1 else tokenizer.eos_token_id
        expected = generate(policy, ids, mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        whole_bytes = sharded_bytes(policy)["parameters"]
        # One clipped gradient of a loss over the same rows on both ranks (so the mean over ranks is that gradient).
        same_ids, same_mask = _prompts(tokenizer, 0)

        def clipped_gradients() -> list[torch.Tensor]:
            policy.zero_grad(set_to_none=True)
            policy(input_ids=same_ids, attention_mask=same_mask).logits.pow(2).mean().backward()
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm=1e-3)
            assert float(full_tensor(norm)) > 1e-3  # clipping did scale the gradients
            return [full_tensor(p.grad).clone() for p in policy.parameters()]

        expected_grads = clipped_gradients()

        mesh = init_device_mesh("cpu", (2,))
        shard_model(policy, mesh)
        shard_model(scorer, mesh)  # body and score head are units of their own: sequence_scores calls them apart
        assert is_sharded(policy) and is_sharded(scorer)
        assert shard_model(policy, mesh) is policy  # a second call changes nothing

        torch.testing.assert_close(policy(input_ids=ids, attention_mask=mask).logits, expected_logits)
        torch.testing.assert_close(sequence_scores(scorer, ids, mask), expected_scores)
        for gather in (True, False):
            got = generate(
                policy,
                ids,
                mask,
                max_new_tokens=6,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                gather_sharded=gather,
            )
            assert torch.equal(got.response_ids[:, : expected.response_ids.size(1)], expected.response_ids)
            assert torch.equal(got.has_eos, expected.has_eos)
        # After sampling every block holds its shard only again.
        local = sum(p.to_local().numel() for p in policy.parameters())
        assert local < sum(p.numel() for p in policy.parameters())
        with gathered_for_sampling(policy):
            policy(input_ids=ids, attention_mask=mask)
        assert sum(p.to_local().numel() for p in policy.parameters()) == local

        for got, want in zip(clipped_gradients(), expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
        policy.zero_grad(set_to_none=True)
        sharded = sharded_bytes(policy)["parameters"]
        from lit_rlhf.engines.weights import engine_weights

        pushed = dict(engine_weights(policy))  # what a sampling engine is fed: whole tensors on every rank
        state = full_state_dict(policy)
        torch.save(
            {
                "rank": rank,
                "whole_bytes": whole_bytes,
                "sharded_bytes": sharded,
                "state_keys": sorted(state),
                "state_equal": all(torch.equal(state[k], v) for k, v in whole_state.items()) if state else None,
                "engine_weights_equal": set(pushed) == set(whole_state)
                and all(torch.equal(pushed[k], v) for k, v in whole_state.items()),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_sharded_models_forward_score_sample_clip_and_gather_as_whole_ones(tmp_path):
    mp.spawn(_check_on_two_ranks, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # Each process holds about half of the parameters' bytes (norm weights and small tensors split unevenly).
    for rank in ranks:
        assert rank["sharded_bytes"] <= 0.55 * rank["whole_bytes"]
    # The full weights reach rank 0 only, equal to the model before sharding.
    assert ranks[0]["state_equal"] is True and len(ranks[0]["state_keys"]) > 0
    # A sampling engine's weights are gathered tensor by tensor on every rank.
    assert all(rank["engine_weights_equal"] for rank in ranks)
    assert ranks[1]["state_keys"] == []


def test_fsdp2_precision_follows_the_trainer_precision():
    cpu = torch.device("cpu")
    assert fsdp_param_dtype("bf16-mixed", cpu) is torch.bfloat16
    assert fsdp_param_dtype("32-true", cpu) is None
    assert fsdp_param_dtype("bf16-true", cpu) is None  # the weights themselves are bf16
    with pytest.raises(ConfigError, match="16-mixed is not supported with FSDP2"):
        fsdp_param_dtype("16-mixed", cpu)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("deepspeed", "does not train under DeepSpeed"),
        ("deepspeed_stage_3_offload", "does not train under DeepSpeed"),
        ("fsdp", "FSDPStrategy \\(FSDP1"),
        ("fsdp_cpu_offload", "FSDPStrategy \\(FSDP1"),
    ],
)
def test_refused_strategy_names_point_to_fsdp2(name, match):
    with pytest.raises(ConfigError, match=f"SFTModule .*{match}.*--trainer.strategy fsdp2"):
        check_strategy_name(name, "SFTModule")
    check_strategy_name("fsdp2", "SFTModule")
    check_strategy_name("ddp", "SFTModule")
