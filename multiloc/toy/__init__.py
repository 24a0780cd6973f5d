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
