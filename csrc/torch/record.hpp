// record.hpp -- internal to the C++ adapter: reads the aliases out of the
// structure record that torch.save(format="safetensors") writes.
#ifndef SAFETENSORS_TORCH_RECORD_HPP
#define SAFETENSORS_TORCH_RECORD_HPP

#include <map>
#include <string>
#include <string_view>

namespace safetensors::detail {

// The __metadata__ key of the record (torch_safetensors/_hook.py).
inline constexpr std::string_view kStructureKey = "torch_safetensors.structure";

// Walks the record's JSON and returns natural dotted name -> stored name for
// every tensor node whose dotted path differs from the name it is stored
// under (tied weights stored once). is_stored tells whether a name is a
// tensor of the file; natural names that are themselves stored tensors are
// skipped. A record that is not valid JSON or nests deeper than a fixed
// limit yields no aliases: the file stays readable as a flat dict.
std::map<std::string, std::string> record_aliases(
    std::string_view json, bool (*is_stored)(const void *ctx, const std::string &name),
    const void *ctx);

}  // namespace safetensors::detail

#endif  // SAFETENSORS_TORCH_RECORD_HPP
