import torch

from interp.capture.batching import encode, format_prompt, last_index, pad


def test_pad_right_and_left_positions_and_last_index():
    seqs = [[5, 6, 7], [8]]
    r = pad(seqs, pad_id=0, side="right")
    assert r.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert r.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert last_index(r.attention_mask).tolist() == [2, 0]
    l = pad(seqs, pad_id=0, side="left")
    assert l.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert l.position_ids[1, 2].item() == 0 and l.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert last_index(l.attention_mask).tolist() == [2, 2]
    assert r.lengths.tolist() == [3, 1]


def test_chat_format_and_truncation_keeps_the_end(tiny):
    tok = tiny.tokenizer
    text = format_prompt(tok, "hello", chat=True)
    assert text.startswith("<|im_start|>user\nhello") and text.endswith("<|im_start|>assistant\n")
    assert format_prompt(tok, "hello", chat=False) == "hello"
    full = encode(tok, ["a fairly long prompt"], chat=True, max_tokens=1000)[0]
    cut = encode(tok, ["a fairly long prompt"], chat=True, max_tokens=10)[0]
    assert full.truncated == 0 and cut.truncated == len(full.ids) - 10
    assert cut.ids == full.ids[-10:]  # the generation prompt survives


def test_padding_does_not_change_activations(tiny):
    """A padded batch (either side) gives the same last-token logits as one prompt at a time."""
    seqs = [[10, 20, 30, 40, 50], [60, 70], [80, 90, 100]]
    model = tiny.model
    with torch.no_grad():
        single = [model(input_ids=torch.tensor([s])).logits[0, -1] for s in seqs]
        for side in ("left", "right"):
            b = pad(seqs, tiny.tokenizer.pad_token_id, side)
            logits = model(**b.model_kwargs()).logits
            last = logits[torch.arange(len(seqs)), last_index(b.attention_mask)]
            for i in range(len(seqs)):
                torch.testing.assert_close(last[i], single[i], rtol=1e-4, atol=1e-5)
