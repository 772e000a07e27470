"""Child of test_patch.py: loads a saved transformers model in a fresh process.

argv: MODE MODEL_DIR OUT_PATH. MODE says when the patch happens:
  before  patch_safetensors(), then import transformers
  after   import transformers, then patch_safetensors()
  env     only import transformers (TORCH_SAFETENSORS_PATCH set by the parent;
          torch's backend autoload imports torch_safetensors)
  none    no patch (the parent may still set TORCH_SAFETENSORS_PATCH=0)
Writes the logits of a fixed input to OUT_PATH (torch.save) and prints one JSON
line: how many files torch_safetensors opened, what modeling_utils.safe_open is.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    mode, model_dir, out_path = sys.argv[1:4]
    if mode == "before":
        import torch_safetensors

        assert torch_safetensors.patch_safetensors() is True
    import transformers
    import transformers.modeling_utils as mu

    if mode == "after":
        import torch_safetensors

        assert torch_safetensors.patch_safetensors() is True
    import torch
    import torch_safetensors._patch as patch  # already imported by torch's autoload

    opens = []
    real_open = patch._open

    def counting_open(*args, **kwargs):
        opens.append(str(args[0]))
        return real_open(*args, **kwargs)

    patch._open = counting_open
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.arange(12).reshape(2, 6)).logits
    torch.save(logits, out_path)
    print(json.dumps({
        "opens": len(opens),
        "patched": patch.is_patched(),
        "modeling_utils_safe_open": f"{mu.safe_open.__module__}.{mu.safe_open.__qualname__}",
    }))


if __name__ == "__main__":
    main()
