# SPDX-License-Identifier: Apache-2.0
"""attn.hf_latent.use_latent_cache: DeepSeek-V2/V3 MLA on attn's latent cache inside generate().

Tiny randomly initialised transformers models (fixed seeds): greedy tokens identical to the
unmodified eager model in fp32 (with and without left padding), prefill logits equal within fp32
rounding, the cache's bytes per token, transformers' Cache holding no K/V, bf16 error against an
fp64 reference within FlashAttention's rule, and the refusals.

    PYTHONPATH=build/python .venv/bin/python -m pytest -q tests/python_torch/test_hf_latent.py
"""

import os
import sys

import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch 2.x (the .venv of scripts/install-deps.sh)")
transformers = pytest.importorskip(
    "transformers", reason="needs transformers 5.x (the .venv of scripts/install-deps.sh)")
if not hasattr(transformers, "DeepseekV3ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no DeepseekV3ForCausalLM",
                allow_module_level=True)

import attn  # noqa: E402

try:
    import attn.hf_latent as hfl  # noqa: E402
except ModuleNotFoundError:  # a build tree made before hf_latent.py was copied into it
    attn.__path__.append(os.path.join(os.path.dirname(__file__), "..", "..", "python", "attn"))
    import attn.hf_latent as hfl  # noqa: E402

from transformers import (  # noqa: E402
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
)

PROMPT = 9
NEW = 32
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=128,
            beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)
# DeepSeek-V2's YaRN: mscale = mscale_all_dim = 0.707 (the cos/sin factor is 1, the scale ≠ 1).
YARN_V2 = dict(YARN, mscale=0.707, mscale_all_dim=0.707)


def make_model(kind="v3", dtype=torch.float32, **overrides):
    """A tiny DeepSeek model: hidden 64, 2 layers (dense then MoE), 4 heads, q_lora 48,
    kv_lora 32, rope 16, nope 32, v_head 24 (≠ nope, so K and V shapes cannot be confused)."""
    torch.manual_seed(0)
    config = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32,
        qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=24, max_position_embeddings=512,
        moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, attn_implementation="eager", pad_token_id=0, bos_token_id=1,
        eos_token_id=None, initializer_range=0.1)  # 0.1: logits far from uniform, no near-ties
    if kind == "v3":
        config.update(n_group=1, topk_group=1)
        config_class, model_class = DeepseekV3Config, DeepseekV3ForCausalLM
    else:
        config_class, model_class = DeepseekV2Config, DeepseekV2ForCausalLM
    config.update(overrides)
    model = model_class(config_class(**config)).eval().to(dtype)
    # .to() casts RoPE's inverse frequencies too; keep them fp32 as the rope init makes them
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)
    return model


def prompts(batch=3, padded=True, seed=1):
    """Token ids [batch, PROMPT] and their mask; rows 1 and 2 left-padded by 3 and 5 when padded."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 128, (batch, PROMPT), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0
        mask[2, :5] = 0
        ids[mask == 0] = 0
    return ids, mask


def greedy(model, ids, mask, **kwargs):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                              **kwargs)


def logits(model, ids, mask=None, **kwargs):
    with torch.inference_mode():
        return model(ids, attention_mask=mask, **kwargs).logits.double()


def masked_max_error(a, b, mask):
    """Largest |a - b| over real (unpadded) positions; padded rows may be NaN in fp64 eager."""
    keep = mask.bool()[..., None].expand_as(a)
    return (a - b).abs()[keep].max().item()


VARIANTS = [
    pytest.param("v3", {}, id="v3-q_lora"),
    pytest.param("v3", {"q_lora_rank": None}, id="v3-no-q_lora"),
    pytest.param("v3", {"rope_parameters": YARN}, id="v3-yarn"),
    pytest.param("v3", {"rope_interleave": False}, id="v3-rotate-half"),
    pytest.param("v2", {"q_lora_rank": None, "rope_parameters": YARN_V2}, id="v2-lite-yarn"),
]


# (a) greedy tokens identical to eager in fp32, with and without left padding; (b) prefill
# logits equal; (c) bytes per token and no K/V in transformers' Cache.
@pytest.mark.parametrize("kind,overrides", VARIANTS)
def test_greedy_tokens_and_logits_match_eager_fp32(kind, overrides):
    model = make_model(kind, **overrides)
    padded_ids, padded_mask = prompts(padded=True)
    plain_ids, plain_mask = prompts(batch=2, padded=False, seed=2)
    want_padded = greedy(model, padded_ids, padded_mask)
    want_plain = greedy(model, plain_ids, plain_mask)
    want_logits = logits(model, padded_ids, padded_mask)
    # generate() keeps varied text going (not one token repeated), so the comparison means something
    assert len(set(want_padded[0, PROMPT:].tolist())) > 4

    handle = hfl.use_latent_cache(model)
    assert len(handle.modules) == 2
    assert all(isinstance(layer.self_attn, hfl.AttnMLAAttention) for layer in model.model.layers)

    got_logits = logits(model, padded_ids, padded_mask)
    scale = want_logits.abs().max().item()
    # Padded query rows differ by design (attn: zero attention row; eager: mean over masked keys).
    assert masked_max_error(got_logits, want_logits, padded_mask) <= 2e-5 * scale

    with torch.inference_mode():
        result = model.generate(padded_ids, attention_mask=padded_mask, max_new_tokens=NEW,
                                do_sample=False, return_dict_in_generate=True)
    assert torch.equal(result.sequences, want_padded)
    assert torch.equal(greedy(model, plain_ids, plain_mask), want_plain)

    cache = result.past_key_values
    rk_dr = model.config.kv_lora_rank + model.config.qk_rope_head_dim
    assert cache.get_seq_length() == PROMPT + NEW - 1
    for layer_cache, attn_cache in zip(cache.layers, hfl.attn_caches(cache)):
        assert isinstance(layer_cache, hfl.LatentCacheLayer)
        assert layer_cache.keys.numel() == 0 and layer_cache.values.numel() == 0
        assert layer_cache.keys.untyped_storage().nbytes() == 0
        assert attn_cache.bytes_per_token == rk_dr * 4
        assert attn_cache.nbytes == 3 * attn_cache.capacity * rk_dr * 4
        assert attn_cache.capacity == PROMPT + NEW  # from generate's max_new_tokens
        assert attn_cache.lengths.tolist() == [PROMPT + NEW - 1] * 3
        assert attn_cache.mla == "auto" and attn_cache.dtype == "f32"
    assert handle.bytes_per_token() == [rk_dr * 4, rk_dr * 4]

    handle.undo()
    assert not any(isinstance(m, hfl.AttnMLAAttention) for m in model.modules())
    assert torch.equal(greedy(model, plain_ids, plain_mask), want_plain)
    handle.redo()  # the same attn layers again, not rebuilt
    assert [layer.self_attn for layer in model.model.layers] == handle.modules
    assert torch.equal(greedy(model, padded_ids, padded_mask), want_padded)
    handle.undo()


def test_absorbed_form_bf16_cache_and_long_positions():
    """mla='absorbed' with a bf16 cache on an fp32 model; position_ids with gaps (RoPE is
    relative, so only uneven steps show whether the positions are used) reaching far past
    YaRN's original context (frequencies and attention factor as transformers computes them)."""
    model = make_model("v3", rope_parameters=YARN)
    ids, mask = prompts(batch=2, padded=False)
    positions = torch.tensor([[0, 1, 2, 3, 50, 51, 200, 201, 480],
                              [7, 9, 11, 100, 101, 102, 300, 301, 302]])
    want = logits(model, ids, position_ids=positions)
    with hfl.use_latent_cache(model, mla="absorbed", dtype=torch.bfloat16) as handle:
        assert handle.bytes_per_token() == [(32 + 16) * 2] * 2
        got = logits(model, ids, position_ids=positions)
        # bf16 latent rows: about 2^-9 relative on the cached keys and values
        assert (got - want).abs().max().item() <= 2e-2 * want.abs().max().item()
    with hfl.use_latent_cache(model, mla="absorbed"):
        got = logits(model, ids, position_ids=positions)
        assert (got - want).abs().max().item() <= 2e-5 * want.abs().max().item()


def test_chunked_prefill_then_decode_through_model_calls():
    """Direct forward calls with a DynamicCache: prefill in two chunks, then decode steps, each
    step's logits equal to one eager forward over the whole sequence."""
    model = make_model("v3")
    ids, mask = prompts(padded=True)
    extra = torch.randint(2, 128, (3, 4), generator=torch.Generator().manual_seed(5))
    full_ids = torch.cat([ids, extra], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    want = logits(model, full_ids, full_mask, position_ids=positions)
    with hfl.use_latent_cache(model, capacity=64):
        cache = DynamicCache(config=model.config)
        pieces = [(0, 5), (5, PROMPT)] + [(t, t + 1) for t in range(PROMPT, PROMPT + 4)]
        got = []
        with torch.inference_mode():
            for start, end in pieces:
                out = model(full_ids[:, start:end], attention_mask=full_mask[:, :end],
                            position_ids=positions[:, start:end], cache=cache, use_cache=True)
                got.append(out.logits.double())
        got = torch.cat(got, dim=1)
        assert cache.get_seq_length() == PROMPT + 4
        assert masked_max_error(got, want, full_mask) <= 2e-5 * want.abs().max().item()
        assert [c.capacity for c in hfl.attn_caches(cache)] == [64, 64]


def test_continuing_a_returned_cache_and_a_new_generation_resets():
    model = make_model("v3")
    ids, mask = prompts(batch=1, padded=False)
    want = greedy(model, ids, mask)
    with hfl.use_latent_cache(model, capacity=PROMPT + NEW):
        with torch.inference_mode():
            first = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                   return_dict_in_generate=True)
            more = model.generate(first.sequences, cache=first.past_key_values,
                                  max_new_tokens=NEW - 10, do_sample=False)
        assert torch.equal(more, want)
        # a new generate() starts over: same tokens again
        assert torch.equal(greedy(model, ids, mask), want)
        # a cache reset by transformers starts over in place
        cache = first.past_key_values
        cache.reset()
        assert cache.get_seq_length() == 0
        assert all(c.lengths.tolist() == [0] for c in hfl.attn_caches(cache))
        # and takes a new batch (of another size) as a new sequence set
        ids2, mask2 = prompts(batch=3, padded=True)
        with torch.inference_mode():
            got = model(ids2, attention_mask=mask2, cache=cache, use_cache=True).logits.double()
        assert cache.get_seq_length() == PROMPT
    want2 = logits(model, ids2, mask2)
    assert masked_max_error(got, want2, mask2) <= 2e-5 * want2.abs().max().item()


# (d) bf16: error against fp64 within 2x the bf16-eager error (+ a floor), prefill and decode.
def test_bf16_within_flash_attention_rule_of_fp64():
    # dense layers only: transformers' grouped-GEMM experts take no float64
    model64 = make_model("v3", dtype=torch.float64, rope_parameters=YARN, first_k_dense_replace=2)
    model16 = make_model("v3", dtype=torch.bfloat16, rope_parameters=YARN, first_k_dense_replace=2)
    ids, mask = prompts(padded=True)
    extra = torch.randint(2, 128, (3, 6), generator=torch.Generator().manual_seed(7))
    full_ids = torch.cat([ids, extra], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], dim=1)
    # fp64 eager turns padded rows into NaN that reach real rows (0 · NaN in P·V), so the
    # reference runs each sequence alone, unpadded, placed back at its real slots.
    reference = torch.zeros(*full_ids.shape, 128, dtype=torch.float64)
    for row in range(full_ids.shape[0]):
        real = full_mask[row].bool()
        reference[row, real] = logits(model64, full_ids[row, real][None])[0]
    eager = logits(model16, full_ids, full_mask)
    eager_error = masked_max_error(eager, reference, full_mask)
    floor = 1e-3 * reference.abs().max().item()

    with hfl.use_latent_cache(model16) as handle:
        assert handle.dtype == "bf16" and handle.bytes_per_token() == [(32 + 16) * 2] * 2
        prefill = logits(model16, full_ids, full_mask)
        assert masked_max_error(prefill, reference, full_mask) <= 2 * eager_error + floor
        # prefill PROMPT tokens, then one decode step per extra token (teacher forcing)
        cache = DynamicCache(config=model16.config)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        steps = [(0, PROMPT)] + [(t, t + 1) for t in range(PROMPT, full_ids.shape[1])]
        got = []
        with torch.inference_mode():
            for start, end in steps:
                got.append(model16(full_ids[:, start:end], attention_mask=full_mask[:, :end],
                                   position_ids=positions[:, start:end], cache=cache,
                                   use_cache=True).logits.double())
        decoded = torch.cat(got, dim=1)
        assert masked_max_error(decoded, reference, full_mask) <= 2 * eager_error + floor
        # greedy next tokens of the real rows agree with fp64 where fp64's margin is clear
        top2 = reference[:, -1].topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 4 * (2 * eager_error + floor)
        assert torch.equal(decoded[:, -1].argmax(-1)[clear], reference[:, -1].argmax(-1)[clear])


# (e) refusals
def test_refuses_models_without_mla():
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2)).eval()
    with pytest.raises(ValueError, match="no DeepSeek-V2/V3 MLA attention modules.*llama"):
        hfl.use_latent_cache(llama)
    with pytest.raises(ValueError, match="no DeepSeek-V2/V3 MLA"):
        hfl.use_latent_cache(torch.nn.Linear(2, 2))


def test_refuses_what_attn_cannot_express():
    with pytest.raises(ValueError, match="bias"):
        hfl.use_latent_cache(make_model("v3", attention_bias=True))
    model = make_model("v3")
    model.model.layers[1].self_attn.kv_a_layernorm.variance_epsilon = 1e-5
    with pytest.raises(ValueError, match="eps"):
        hfl.use_latent_cache(model)
    assert not any(isinstance(m, hfl.AttnMLAAttention) for m in model.modules())  # all or nothing
    model = make_model("v3")
    with pytest.raises(ValueError, match="mla"):
        hfl.use_latent_cache(model, mla="naive")
    with pytest.raises(ValueError, match="dtype"):
        hfl.use_latent_cache(model, dtype="fp8")
    with pytest.raises(ValueError, match="capacity"):
        hfl.use_latent_cache(model, capacity=0)
    handle = hfl.use_latent_cache(model)
    with pytest.raises(ValueError, match="already active"):
        hfl.use_latent_cache(model)
    handle.undo()
    hfl.use_latent_cache(model).undo()


def test_refuses_unsupported_generation_and_calls():
    model = make_model("v3")
    ids, mask = prompts(batch=2, padded=False)
    handle = hfl.use_latent_cache(model, capacity=64)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(ids, max_new_tokens=4, num_beams=2, do_sample=False)
    with pytest.raises(ValueError, match="output_attentions"):
        model.generate(ids, max_new_tokens=4, output_attentions=True,
                       return_dict_in_generate=True)
    with torch.no_grad(), pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(ids, max_new_tokens=4, cache_implementation="static")
    with pytest.raises(ValueError, match="crops the cache"):
        model.generate(ids, max_new_tokens=4, prompt_lookup_num_tokens=2)

    model.train()
    with pytest.raises(ValueError, match="no autograd"):
        model(ids)
    model.eval()

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(ids, cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="batch 1 given to a cache holding 2"):
            model(ids[:1, :1], cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="beam search"):
            cache.reorder_cache(torch.tensor([1, 0]))
        with pytest.raises(ValueError, match="cropped"):
            cache.crop(-1)
        # the original modules cannot write transformers' K/V into attn's cache layers
        handle.undo()
        with pytest.raises(ValueError, match="holds attn's latent rows"):
            model(ids[:, :1], cache=cache, use_cache=True)
        # and a cache filled by the original modules is not taken over
        hf_cache = DynamicCache(config=model.config)
        model(ids, cache=hf_cache, use_cache=True)
        handle = hfl.use_latent_cache(model)
        with pytest.raises(ValueError, match="transformers' own K/V"):
            model(ids[:, :1], cache=hf_cache, use_cache=True)
    handle.undo()


def test_capacity_is_fixed_and_overflow_is_clear():
    model = make_model("v3")
    ids, mask = prompts(batch=1, padded=False)
    with hfl.use_latent_cache(model, capacity=PROMPT + 2), torch.no_grad():
        with pytest.raises(ValueError, match="latent cache is full.*capacity"):
            model.generate(ids, max_new_tokens=8, do_sample=False)
    with hfl.use_latent_cache(model, capacity=PROMPT - 1), torch.no_grad():
        with pytest.raises(ValueError, match="do not fit"):
            model(ids, cache=DynamicCache(config=model.config), use_cache=True)


def test_weights_changed_after_the_swap_are_refused():
    model = make_model("v3")
    ids, _ = prompts(batch=1, padded=False)
    with hfl.use_latent_cache(model), torch.no_grad():
        model(ids)
        state = model.state_dict()  # unchanged names: the HF projections stay submodules
        assert "model.layers.0.self_attn.kv_b_proj.weight" in state
        model.model.layers[0].self_attn.kv_b_proj.weight.mul_(2)
        with pytest.raises(ValueError, match="kv_b_proj.weight' changed"):
            model(ids)


def test_bench_script_runs_tiny(tmp_path):
    """scripts/bench_hf_latent.py end to end on its --tiny model (a smoke test, not a timing)."""
    import importlib.util
    import json

    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench_hf_latent.py")
    spec = importlib.util.spec_from_file_location("bench_hf_latent", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads(), attn.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        assert bench.main(["--tiny", "--layers", "1", "--contexts", "8,24", "--steps", "2",
                           "--chunk", "16", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads[0])
        attn.set_num_threads(threads[1])
    report = json.loads(out.read_text())
    assert [row["context"] for row in report["rows"]] == [8, 24]
    assert all(len(row["attn_ms"]) == 2 and row["logits_max_rel_diff"] < 5e-2
               for row in report["rows"])
    assert report["cache_bytes_per_token_per_layer"]["attn"] == (64 + 16) * 2
    assert report["cache_bytes_per_token_per_layer"]["transformers"] == (64 + 16) * 2


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
