// record.hpp -- internal to the C++ adapter: checks the structure record
// (docs/RECORD.md, version 1) and reads its aliases.
#ifndef SAFETENSORS_TORCH_RECORD_HPP
#define SAFETENSORS_TORCH_RECORD_HPP

#include <safetensors.h>

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace safetensors::detail {

// The __metadata__ key of the record, and the prefix of every key the project
// adds (docs/RECORD.md).
inline constexpr std::string_view kKeyPrefix = "torch_safetensors.";
inline constexpr std::string_view kStructureKey = "torch_safetensors.structure";
// Tied names that save_file / save_sharded (policy "tie") dropped:
// __metadata__["torch_safetensors.alias.<dropped>"] = "<kept>" (docs/RECORD.md).
inline constexpr std::string_view kAliasKeyPrefix = "torch_safetensors.alias.";
// The version this adapter reads and writes.
inline constexpr int kRecordVersion = 1;

// A record that breaks a rule of docs/RECORD.md: the status and message the
// spec's table gives (Python raises the same).
struct RecordError {
  st_status status;
  std::string message;
};

// Checks the record text of file against every rule of docs/RECORD.md and
// returns path name -> stored name for every aliased tensor node. Throws
// RecordError.
std::map<std::string, std::string> record_aliases(std::string_view json, const st_file *file);

// The record of a flat map, as Python writes records (compact JSON, version
// first, ensure_ascii): a "dict" root whose items are, in order, (key, tensor
// node naming the stored tensor). Keys and names are UTF-8.
std::string flat_record(const std::vector<std::pair<std::string, std::string>> &items);

}  // namespace safetensors::detail

#endif  // SAFETENSORS_TORCH_RECORD_HPP
