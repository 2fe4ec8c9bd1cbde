"""Text encoders: a local transformers folder (a tiny random T5 with the byte-level ByT5 tokenizer, offline) gives
its encoder's states and the padding mask; the cache encodes each distinct prompt once and round-trips a file."""
import pytest
import torch

from ditkit.models.text import CachedTextEncoder, TransformersTextEncoder

PROMPTS = ["a bold 7 at the top left", "3 on the left and 8 on the right", "a bold 7 at the top left"]


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    transformers.ByT5Tokenizer().save_pretrained(folder)
    return folder


def test_transformers_folder_gives_encoder_states_and_mask(t5_folder):
    encoder = TransformersTextEncoder(t5_folder, max_length=40)
    states, mask = encoder.encode(PROMPTS)
    assert states.shape == (3, 40, 32) and mask.shape == (3, 40) and encoder.dim == 32
    assert mask.sum(1).tolist() == [len(p.encode()) + 1 for p in PROMPTS]          # bytes + </s>, rest padding
    import transformers
    tokenizer = transformers.ByT5Tokenizer()
    ids = tokenizer(PROMPTS[:1], padding="max_length", max_length=40, return_tensors="pt")
    model = transformers.T5EncoderModel.from_pretrained(t5_folder).eval()
    with torch.no_grad():
        reference = model(**ids).last_hidden_state
    assert torch.allclose(states[:1], reference, atol=1e-6)
    assert torch.equal(states[0], states[2])


def test_cache_encodes_each_prompt_once_and_round_trips(t5_folder, tmp_path):
    inner = TransformersTextEncoder(t5_folder, max_length=40)
    calls = []
    real = inner.encode
    inner.encode = lambda prompts: calls.append(list(prompts)) or real(prompts)
    cache = CachedTextEncoder(inner)
    a = cache.encode(PROMPTS)
    b = cache.encode(PROMPTS[::-1])
    assert calls == [PROMPTS[:2]]                                                   # two distinct prompts, once
    assert torch.equal(a[0][0], b[0][2]) and torch.equal(a[1], b[1].flip(0))
    path = cache.save(tmp_path / "cache.safetensors")
    loaded = CachedTextEncoder(inner).load(path)
    c = loaded.encode(PROMPTS)
    assert len(calls) == 1 and torch.equal(c[0], a[0]) and torch.equal(c[1], a[1])


def test_bad_folders_and_caches_are_clear_errors(t5_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        TransformersTextEncoder(tmp_path)
    other = CachedTextEncoder(TransformersTextEncoder(t5_folder, max_length=8))
    other.encode(["x"])
    path = other.save(tmp_path / "c.safetensors")
    narrow = TransformersTextEncoder(t5_folder, max_length=8)
    narrow.dim = 16
    with pytest.raises(ValueError, match="caches 32-wide text states but this encoder makes 16"):
        CachedTextEncoder(narrow).load(path)


def test_word_tokenizer_covers_every_scene_caption_and_round_trips():
    from ditkit.data.scenes import VOCABULARY, CaptionedScenes
    from ditkit.models.text import WordTokenizer
    tokenizer = WordTokenizer(VOCABULARY)
    captions = CaptionedScenes("train").get(range(200))[1]
    ids, mask = tokenizer.encode(captions, 24)
    assert not (ids == WordTokenizer.UNKNOWN).any() and mask.sum(1).max() < 24      # no unknown word, nothing cut
    assert (ids.gather(1, mask.sum(1, keepdim=True) - 1) == WordTokenizer.END).all()      # each ends with </s>
    again = WordTokenizer.from_dict(tokenizer.to_dict())
    assert torch.equal(again.encode(captions, 24)[0], ids)
    unknown, _ = tokenizer.encode(["a purple 7"], 6)
    assert unknown[0].tolist() == [tokenizer.ids["a"], WordTokenizer.UNKNOWN, tokenizer.ids["7"], WordTokenizer.END,
                                   0, 0]


def test_small_text_encoder_ignores_padding():
    from ditkit.data.scenes import VOCABULARY
    from ditkit.models.text import SmallTextEncoder, WordTokenizer
    torch.manual_seed(0)
    encoder = SmallTextEncoder(WordTokenizer(VOCABULARY), dim=32, depth=2, num_heads=4, max_length=24).eval()
    states, mask = encoder.encode(PROMPTS)
    assert states.shape == (3, 24, 32) and (states[~mask] == 0).all()
    short = SmallTextEncoder(encoder.tokenizer, dim=32, depth=2, num_heads=4, max_length=12).eval()
    short.load_state_dict({**encoder.state_dict(), "positions": encoder.positions[:12]})
    s2, m2 = short.encode(PROMPTS)                                     # same tokens, less padding
    n = int(mask[0].sum())
    assert torch.allclose(states[0, :n], s2[0, :n], atol=1e-5) and torch.equal(m2[0, :n], mask[0, :n])
    assert not torch.allclose(states[0, :n], states[1, :n], atol=1e-3)
