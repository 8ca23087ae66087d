import pytest
import torch
from scalpel.train import params
from transformers import Olmo2Config, Olmo2ForCausalLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Olmo2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=4, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None, tie_word_embeddings=False)
    return Olmo2ForCausalLM(cfg)


def test_expand_braces():
    assert params.expand_braces("model.layers.{1..3}.mlp.*") == [
        "model.layers.1.mlp.*", "model.layers.2.mlp.*", "model.layers.3.mlp.*"]
    assert params.expand_braces("*.{q,k}_proj.*") == ["*.q_proj.*", "*.k_proj.*"]
    with pytest.raises(ValueError, match="empty range"):
        params.expand_braces("{3..1}")


def test_freeze_mid_layer_mlps(model):
    trainable = params.apply_trainable(model, ["model.layers.{1..2}.mlp.*"], None, "runs.x")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"model.layers.{i}.mlp.{m}_proj.weight" for i in (1, 2) for m in ("gate", "up", "down")}
    assert "model.layers.0.mlp.up_proj.weight" in trainable and "model.embed_tokens.weight" in trainable


def test_train_only_q_and_k(model):
    trainable = params.apply_trainable(model, None, ["*.q_proj.*", "*.k_proj.*"], "runs.x")
    assert len(trainable) == 8
    assert all(n.endswith(("q_proj.weight", "k_proj.weight")) for n in trainable)
    assert sum(p.requires_grad for p in model.parameters()) == 8


def test_regex_pattern(model):
    trainable = params.apply_trainable(model, None, [r"re:model\.layers\.[03]\.self_attn\.v_proj\.weight"], "r")
    assert trainable == ["model.layers.0.self_attn.v_proj.weight", "model.layers.3.self_attn.v_proj.weight"]


@pytest.mark.parametrize("freeze, train_only, where", [
    (["model.layers.{19..25}.mlp.*"], None, "runs.sft_frozen.freeze"),  # the 7B pattern on a 4-layer model
    (None, ["*.qproj.*"], "runs.sft_frozen.train_only"),
])
def test_pattern_matching_nothing_is_an_error(model, freeze, train_only, where):
    with pytest.raises(ValueError, match=rf"{where}\[0\]: pattern .* matches no parameter of the model"):
        params.apply_trainable(model, freeze, train_only, "runs.sft_frozen")


def test_freezing_everything_is_an_error(model):
    with pytest.raises(ValueError, match=r"runs.x: the freeze patterns leave no parameter of the model trainable"):
        params.apply_trainable(model, ["*"], None, "runs.x")


def test_a_tied_output_head_is_not_a_parameter_of_its_own():
    """With tie_word_embeddings the head is embed_tokens' tensor: lm_head.weight is no parameter name, so the q/k
    run's pattern for it is an error rather than silently training (or freezing) the embeddings."""
    cfg = Olmo2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=None,
                      tie_word_embeddings=True)
    tied = Olmo2ForCausalLM(cfg)
    with pytest.raises(ValueError, match=r"runs.qk.train_only\[2\]: pattern 'lm_head.weight' matches no parameter"):
        params.apply_trainable(tied, None, ["*.q_proj.*", "*.k_proj.*", "lm_head.weight"], "runs.qk")
