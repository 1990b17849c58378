"""The README's "Inside your own training loop": any torch encoder, any optimizer, adore_batch_loss."""
import torch

import drfast


def test_readme_training_loop_learns(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    n_docs, n_queries, dim, feat = 2000, 256, 32, 48
    docs = torch.nn.functional.normalize(torch.randn(n_docs, dim), dim=-1)
    positives = torch.randint(0, n_docs, (n_queries,))
    # query features: a hidden linear view of the positive's vector plus noise, so a linear map can learn it
    features = docs[positives] @ torch.randn(dim, feat) + 0.3 * torch.randn(n_queries, feat)

    # --- the loop, as in the README ---
    index = drfast.FlatIndex(docs.numpy())
    encoder = torch.nn.Linear(feat, dim)               # any torch module giving [B, d] query embeddings
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=3e-3)
    history = []
    for step in range(120):
        batch = torch.randint(0, n_queries, (32,))
        q = encoder(features[batch])
        loss, info = drfast.adore_batch_loss(q, index, [[int(positives[i])] for i in batch], k=100, cutoff=10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(info["mrr10"])
    # ---

    assert encoder.weight.grad is not None
    assert sum(history[-20:]) / 20 > sum(history[:20]) / 20 + 0.2  # MRR@10 of the batches rose
