// alias.hpp -- internal to the C++ adapter: what a save does with tensors
// that share memory (docs/RECORD.md, "Shared memory: the aliasing policy";
// torch_plugin/torch_safetensors/_alias.py is the Python side of the same
// rule).
#ifndef SAFETENSORS_TORCH_ALIAS_HPP
#define SAFETENSORS_TORCH_ALIAS_HPP

#include <safetensors/torch.hpp>

#include <vector>

namespace safetensors::detail {

// For each tensor (in the map's order), the index of the tensor whose stored
// bytes it uses: itself, or with Aliasing::tie the first exact alias (same
// device, storage, storage offset, shape, strides and dtype) before it.
// Aliasing::error throws Error(ST_ERR_INVALID_ARGUMENT) naming a tensor when
// the bytes of any two overlap; Aliasing::copy stores every name.
std::vector<size_t> resolve_aliasing(const TensorDict &tensors, Aliasing policy);

}  // namespace safetensors::detail

#endif  // SAFETENSORS_TORCH_ALIAS_HPP
