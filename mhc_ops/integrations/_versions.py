"""The transformers releases whose modeling code was read, as data: one row per version family (releases
whose code the patches rely on is the same), with, per model family, the fingerprints of the forwards
each patch replaces or relies on and the adapters that family needs.

Plain Python with no imports: noxfile.py reads it (its oldest and newest releases) without torch.
How a new release is added: docs/integrations.md, "A new transformers release".

fingerprints: class name -> ``_patch.fingerprint`` of its forward in those releases (code tokens; comments,
docstrings and layout left out; decorators in). Adapters:
- ``norm_eps``: the attribute of the hyper-connections' ``*UnweightedRMSNorm`` holding its eps (5.25 renamed
  ``eps`` to ``variance_epsilon``).
- ``cache``: GLM-5-Next's decoder layer's name for the cache argument (5.24 renamed ``past_key_values``
  to ``cache``; the linear attention took it as ``cache_params`` before).
"""

_DEEPSEEK_V4_5_18 = {
    "DeepseekV4UnweightedRMSNorm": "f595e20e6e898ab3",
    "DeepseekV4HyperConnection": "aa7decb5288c664b",
    "DeepseekV4HyperHead": "e17ba64bc3c7c81d",
    "DeepseekV4DecoderLayer": "2ed292c80fca9361",
}
_GLM5_NEXT_5_18 = {
    "Glm5NextTextUnweightedRMSNorm": "f595e20e6e898ab3",
    "Glm5NextTextHyperConnection": "aa7decb5288c664b",
    "Glm5NextTextDecoderLayer": "67b2f7b95962ccbe",
}

RELEASES = (
    {
        "family": "5.17",
        "versions": ("5.17.0",),
        # The hyper-connection forward is written differently (flatten instead of view, one expression
        # for the comb logits), with the same math.
        "deepseek_v4": {
            "fingerprints": _DEEPSEEK_V4_5_18 | {"DeepseekV4HyperConnection": "6e08ac93a21c134d"},
            "norm_eps": "eps",
        },
        "glm5_next": {
            "fingerprints": _GLM5_NEXT_5_18 | {"Glm5NextTextHyperConnection": "6e08ac93a21c134d"},
            "norm_eps": "eps",
            "cache": "past_key_values",
        },
    },
    {
        "family": "5.18-5.23",
        "versions": (
            "5.18.0", "5.19.0", "5.20.0", "5.20.1", "5.20.2", "5.21.0", "5.21.1", "5.22.0", "5.22.1", "5.22.2",
            "5.23.0",
        ),  # fmt: skip
        "deepseek_v4": {"fingerprints": _DEEPSEEK_V4_5_18, "norm_eps": "eps"},
        "glm5_next": {"fingerprints": _GLM5_NEXT_5_18, "norm_eps": "eps", "cache": "past_key_values"},
    },
    {
        "family": "5.24",
        "versions": ("5.24.0",),
        # DeepSeek-V4: only the layer's __init__ changed (its norms and HC modules made fp32 at build).
        # GLM-5-Next: the decoder layer's cache argument renamed (with HF's deprecate_kwarg for the old name).
        "deepseek_v4": {"fingerprints": _DEEPSEEK_V4_5_18, "norm_eps": "eps"},
        "glm5_next": {
            "fingerprints": _GLM5_NEXT_5_18 | {"Glm5NextTextDecoderLayer": "84addc91026f5c18"},
            "norm_eps": "eps",
            "cache": "cache",
        },
    },
    {
        "family": "5.25",
        "versions": ("5.25.0",),
        # Both UnweightedRMSNorms: eps renamed variance_epsilon, the same math.
        "deepseek_v4": {
            "fingerprints": _DEEPSEEK_V4_5_18 | {"DeepseekV4UnweightedRMSNorm": "3f6f200757b79cca"},
            "norm_eps": "variance_epsilon",
        },
        "glm5_next": {
            "fingerprints": _GLM5_NEXT_5_18
            | {"Glm5NextTextUnweightedRMSNorm": "3f6f200757b79cca", "Glm5NextTextDecoderLayer": "84addc91026f5c18"},
            "norm_eps": "variance_epsilon",
            "cache": "cache",
        },
    },
)

SUPPORTED_TRANSFORMERS = tuple(v for row in RELEASES for v in row["versions"])
OLDEST, NEWEST = SUPPORTED_TRANSFORMERS[0], SUPPORTED_TRANSFORMERS[-1]
