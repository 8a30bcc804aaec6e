import torch

from detailflow_hf.training.self_correction import (
    nearest_code_candidates,
    noise_span,
    noise_token_index,
    noisy_encode,
)
from tests.image_folder import tiny_tokenizer


def images(batch=3):
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_noise_index_distribution_follows_the_original():
    g = torch.Generator().manual_seed(0)
    # N=16, g=c=4: k ~ U[0, 12), rounded down to 4 or 8 once >= 4
    ks = [noise_token_index(16, 4, 4, generator=g) for _ in range(3000)]
    assert set(ks) == {0, 1, 2, 3, 4, 8}
    share = {k: ks.count(k) / len(ks) for k in set(ks)}
    assert abs(share[4] - 4 / 12) < 0.04 and abs(share[0] - 1 / 12) < 0.03
    # t <= c: k ~ U[0, t); t == 1 or disabled: no noise
    assert {noise_token_index(3, 4, 4, generator=g) for _ in range(200)} == {0, 1, 2}
    assert noise_token_index(1, 4, 4) is None and noise_token_index(16, 4, 4, enabled=False) is None
    assert (noise_span(3, 4, 4), noise_span(4, 4, 4), noise_span(8, 4, 8)) == (1, 4, 4)


def test_noisy_encode_prefix_labels_and_shapes():
    tok = tiny_tokenizer()
    x = images()
    with torch.no_grad():
        clean = tok.encode(x)
        for k, e in ((2, 3), (4, 8), (8, 12)):
            out = noisy_encode(tok, x, k, generator=torch.Generator().manual_seed(0))
            assert out.noise_end == e and out.input_ids.shape == out.label_ids.shape == (3, 16)
            assert out.noisy_latents.shape == out.clean_latents.shape == out.noisy_pre_quant.shape == (3, 16, 8)
            assert torch.equal(out.clean_ids, clean.token_ids)
            assert torch.equal(out.input_ids[:, :k], clean.token_ids[:, :k])
            assert torch.equal(out.label_ids[:, :e], clean.token_ids[:, :e])
            # after the noise, input and label are both the second pass's codes
            pass2 = tok.quantize(out.noisy_pre_quant)[1]
            assert torch.equal(out.label_ids[:, e:], pass2[:, e:]) and torch.equal(out.input_ids[:, e:], pass2[:, e:])
            # the noise ids are among the 50 nearest codes of the clean latents
            near = nearest_code_candidates(tok.quantize, out.clean_pre_quant[:, k:e], 50)
            assert (near == out.input_ids[:, k:e, None]).any(-1).all()
            assert torch.allclose(out.noisy_latents[:, k:e], tok.quantize.lookup(out.input_ids[:, k:e]))
            assert out.code_triples().shape == (3, 16, 3)
    # the refined queries really condition pass 2 on the noisy prefix: some later code changes
    assert not torch.equal(out.label_ids[:, 12:], clean.token_ids[:, 12:])


def test_noisy_encode_is_deterministic_with_a_seeded_generator_and_none_means_clean():
    tok = tiny_tokenizer()
    x = images()
    with torch.no_grad():
        a = noisy_encode(tok, x, 4, top_k=50, generator=torch.Generator().manual_seed(3))
        b = noisy_encode(tok, x, 4, top_k=50, generator=torch.Generator().manual_seed(3))
        c = noisy_encode(tok, x, 4, top_k=50, generator=torch.Generator().manual_seed(4))
        none = noisy_encode(tok, x, None)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.label_ids, b.label_ids)
    assert not torch.equal(a.input_ids[:, 4:8], c.input_ids[:, 4:8])
    assert none.noise_end == 0 and none.noisy_pre_quant is None
    assert torch.equal(none.input_ids, none.clean_ids) and torch.equal(none.label_ids, none.clean_ids)


def test_gradients_skip_the_detached_prefix():
    tok = tiny_tokenizer().train()
    out = noisy_encode(tok, images(2), 4, generator=torch.Generator().manual_seed(0))
    out.noisy_pre_quant[:, 8:].sum().backward()
    assert tok.refine_conv.weight.grad.abs().sum() > 0  # pass 2 sees refine_conv(prefix)
    assert tok.encoder.refined_tokens.grad[:, 8:].abs().sum() > 0
    assert tok.encoder.refined_tokens.grad[:, :8].abs().sum() == 0  # replaced by the prefix
