"""Recording stand-ins for attention replaces, shared by the engine, ControlNet and composition tests."""


class Recorder:
    """Stands in for a replace: records every call as (replace, q, k, v, options, out), then delegates."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options)
        self.calls.append((self.inner, q, k, v, dict(extra_options), out))
        return out


def record_calls(model, kind="attn2"):
    """A clone of ``model`` whose every ``kind`` replace is recorded into the returned list."""
    recorded = []
    clone = model.clone()
    for key, replace in clone.model_options["transformer_options"]["patches_replace"][kind].items():
        clone.set_model_patch_replace(Recorder(replace, recorded), kind, *key)
    return clone, recorded
