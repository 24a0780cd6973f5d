"""Built-in toy models: small real-architecture models trained here, on synthetic data, so that a
scan on a CPU with no hub gives an answer that means something (``multiloc demo``).

- ``toy-shapes`` (image): coloured shapes, 16 px, an SD-style U-Net in IFPipeline (:mod:`.shapes`,
  :mod:`.train`); concepts ``toy-colour`` and ``toy-shape``.
- ``toy-shapes-dit`` (image): the same world drawn by a PixArt-alpha DiT on a tiny VAE's latents, in
  the stock PixArtAlphaPipeline (:mod:`.train_dit`); the same concepts.
- ``toy-tones`` (audio): synthetic instruments at 4 kHz (:mod:`.tones`), a Stable Audio DiT in the
  stock StableAudioPipeline, its Oobleck VAE set to the exact MDCT (:mod:`.lapped`, trainer
  :mod:`.train_audio`); concepts ``toy-instrument`` and ``toy-pitch``.

``multiloc train-toy`` reproduces the shipped weights (``configs/toy/*.safetensors``).
"""


def split(every: list[tuple[str, ...]], held_out: tuple[tuple[str, ...], ...], name: str) -> list[tuple[str, ...]]:
    """A toy world's prompts (as tuples) for split ``name``: ``"all"``, ``"held-out"`` or ``"train"``
    (all but the held-out ones), in ``every``'s order."""
    if name == "all":
        return list(every)
    if name == "held-out":
        return list(held_out)
    if name == "train":
        return [c for c in every if c not in held_out]
    raise ValueError(f"unknown split {name!r}")
