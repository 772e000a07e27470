// safetensors/torch.hpp -- the C++ API of torch-safetensors for LibTorch.
//
// Reads safetensors files into at::Tensor and writes at::Tensor into
// safetensors files, through the C API of <safetensors.h>. No TorchScript,
// no pickle.
//
//   auto tensors = safetensors::load("model.safetensors");   // file order
//   at::Tensor w = tensors.at("fc.weight");                    // zero-copy
//   safetensors::load_into(module, "model.safetensors");       // strict
//   safetensors::save("out.safetensors", tensors, {{"format", "pt"}});
//
// Rules
//   - Zero-copy. A CPU load with the mmap backend returns tensors that view a
//     private copy-on-write mapping of the file: writing to them never
//     changes the file. Each storage holds a reference to the open file, so
//     the mapping lives as long as any tensor uses it -- after File::close(),
//     after the File object is gone, after the file is deleted -- and is
//     unmapped with the last one.
//   - Dtypes and shapes follow the C core's one view policy
//     (st_tensor_torch_view in <safetensors.h>), as the Python package does:
//     every format dtype loads as its torch dtype with the file shape, except
//     F4, which is float4_e2m1fn_x2 (two values per element: the last
//     dimension halved; with an odd last dimension or rank 0, a flat 1-D
//     tensor of its bytes), and F6_E2M3 / F6_E3M2, which torch lacks: a flat
//     1-D uint8 tensor of the raw packed bytes. Tensors whose bytes are not
//     aligned to their element size (files from foreign writers) are loaded
//     as an aligned copy, never as a misaligned view.
//   - Errors. Every failure throws safetensors::Error, which carries the C
//     status (st_status), the byte offset in the file (ST_NO_OFFSET when none
//     applies) and the offending tensor name.
//   - Names. torch.save(state_dict, f, format="safetensors") stores tensors
//     flat under their state_dict names, so C++ sees the Python names. A
//     tied weight that Python stored once (an alias in the
//     "torch_safetensors.structure" metadata record, docs/RECORD.md) is
//     returned under every one of its names, sharing one storage; save()
//     stores tied weights once the same way (SaveOptions::aliasing).
//   - Threads. A File may be read from many threads at once.
#ifndef SAFETENSORS_TORCH_HPP
#define SAFETENSORS_TORCH_HPP

#include <safetensors.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

// POSIX only, as the C library (gcc or clang): symbols are hidden except
// those marked ST_TORCH_API.
#define ST_TORCH_API __attribute__((visibility("default")))

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace safetensors {

// ==========================================================================
// Errors
// ==========================================================================

// The one exception type. what() is "<ST_ERR_NAME>: <message> [at offset
// <offset>] [name '<name>'] (<path>)".
class ST_TORCH_API Error : public std::runtime_error {
 public:
  Error(st_status status, const std::string &message,
        uint64_t offset = ST_NO_OFFSET, std::string name = {},
        int sys_errno = 0);
  // From a filled C error record; context (a path) is appended to what().
  explicit Error(const st_error &err, const std::string &context = {});

  st_status status() const noexcept { return status_; }
  // Byte offset in the file, or ST_NO_OFFSET.
  uint64_t offset() const noexcept { return offset_; }
  // The offending tensor (or key) name, or "".
  const std::string &name() const noexcept { return name_; }
  // errno of a failing system call (ST_ERR_IO), else 0.
  int sys_errno() const noexcept { return sys_errno_; }

 private:
  st_status status_;
  uint64_t offset_;
  std::string name_;
  int sys_errno_;
};

// ==========================================================================
// Name -> tensor, in order
// ==========================================================================

// An insertion-ordered map from names to tensors. load() fills it in file
// order; save() accepts it (or a braced list of pairs).
class ST_TORCH_API TensorDict {
 public:
  using value_type = std::pair<std::string, at::Tensor>;
  using const_iterator = std::vector<value_type>::const_iterator;
  using iterator = std::vector<value_type>::iterator;

  TensorDict() = default;
  TensorDict(std::initializer_list<value_type> items);

  // Adds name -> tensor at the end; throws Error(ST_ERR_DUPLICATE_KEY) when
  // the name is already present.
  void insert(std::string name, at::Tensor tensor);
  // Throws Error(ST_ERR_NOT_FOUND) when absent.
  const at::Tensor &at(std::string_view name) const;
  at::Tensor &at(std::string_view name);
  bool contains(std::string_view name) const;
  // The names, in order.
  std::vector<std::string> keys() const;

  size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }
  const_iterator begin() const noexcept { return items_.begin(); }
  const_iterator end() const noexcept { return items_.end(); }
  iterator begin() noexcept { return items_.begin(); }
  iterator end() noexcept { return items_.end(); }

 private:
  std::vector<value_type> items_;
  std::unordered_map<std::string, size_t> index_;
};

// Metadata: __metadata__ string -> string, sorted by key.
using Metadata = std::map<std::string, std::string>;

// ==========================================================================
// Reading
// ==========================================================================

enum class Backend {
  mmap,   // default: map the file, zero-copy CPU tensors
  pread,  // no mapping: every tensor is read into memory it owns
};

struct LoadOptions {
  // Where the tensors go. Non-CPU devices load through CPU staging.
  c10::Device device = c10::Device(c10::kCPU);
  Backend backend = Backend::mmap;
  // Loads only the names for which the predicate returns true (null: all).
  std::function<bool(const std::string &)> filter;
  // CPU + mmap: copy into owned memory instead of viewing the mapping.
  bool copy = false;
  // Prefault the mapping: read faults map the page cache's pages, no copy.
  bool populate = false;
  // Honour the structure record and the tied-name metadata that save_file /
  // save_sharded write (docs/RECORD.md): tied names that the file stores once
  // come back sharing the stored tensor's storage. The record is
  // checked when the file opens, and one that breaks a rule of the spec
  // throws (ST_ERR_HEADER_DESERIALIZATION; ST_ERR_UNSUPPORTED for a version
  // other than 1; name() is "torch_safetensors.structure"), as Python's
  // torch.load refuses it. false: the record is never read, only the stored
  // tensors are returned, and any valid safetensors file loads.
  bool aliases = true;
};

// An open, fully validated file. Copies share one handle; the handle is
// closed when the last copy and the last tensor viewing it are gone.
class ST_TORCH_API File {
 public:
  // Opens path. With the mmap backend the mapping is private and writable
  // (copy-on-write), so returned tensors are writable. aliases: as
  // LoadOptions::aliases (a bad structure record throws here).
  explicit File(const std::string &path, Backend backend = Backend::mmap,
                bool populate = false, bool aliases = true);

  // Number of tensors (aliases from the structure record not counted).
  size_t size() const;
  // Tensor names in file order.
  std::vector<std::string> names() const;
  // True when name is a tensor of the file or an alias of one.
  bool contains(std::string_view name) const;
  // The stored name that name refers to: name itself, or the tensor an alias
  // names. Throws ST_ERR_NOT_FOUND.
  std::string resolve(std::string_view name) const;
  // The tensor called name (or an alias of it), on options.device; the
  // options' filter and backend are ignored. Throws ST_ERR_NOT_FOUND.
  at::Tensor tensor(std::string_view name, const LoadOptions &options = {}) const;
  // Every tensor that passes options.filter, in file order, then each alias
  // right after the tensor it names. Aliases share the tensor's storage.
  TensorDict tensors(const LoadOptions &options = {}) const;
  // The file's dtype name and shape of a tensor, as stored ("F4" keeps the
  // file's shape, not torch's).
  std::pair<std::string, std::vector<int64_t>> info(std::string_view name) const;

  // The whole __metadata__ record.
  Metadata metadata() const;
  // One metadata value, or nullopt.
  std::optional<std::string> metadata(std::string_view key) const;
  // Path name -> stored name of every aliased tensor node of the structure
  // record (docs/RECORD.md, "Aliases"); empty without a record or when
  // opened with aliases = false.
  const std::map<std::string, std::string> &aliases() const;

  Backend backend() const;
  // Drops this object's reference; tensors already returned stay valid.
  // Any later call other than close() throws ST_ERR_INVALID_ARGUMENT.
  void close() noexcept;
  bool is_open() const noexcept { return static_cast<bool>(handle_); }

  // The C handle (borrowed; lives while this File is open).
  const st_file *c_handle() const noexcept { return handle_.get(); }

 private:
  const st_file *checked() const;
  size_t index_of(std::string_view name) const;
  at::Tensor load_index(size_t index, const LoadOptions &options) const;

  std::shared_ptr<st_file> handle_;
  std::string path_;
  std::map<std::string, std::string> aliases_;
};

// Opens path, loads every tensor that passes the filter, closes the handle
// (views keep the mapping alive). Ordered by file order.
ST_TORCH_API TensorDict load(const std::string &path, const LoadOptions &options = {});

// Loads a file's __metadata__ only.
ST_TORCH_API Metadata load_metadata(const std::string &path);

// ==========================================================================
// Modules
// ==========================================================================

struct LoadReport {
  std::vector<std::string> missing;     // in the module, not in the file
  std::vector<std::string> unexpected;  // in the file, not in the module
  std::vector<std::string> mismatched;  // in both; shape or dtype differ
  // One line per mismatched key: "name: file F16 [2, 3], module Float [3, 2]".
  std::vector<std::string> details;
  bool ok() const noexcept {
    return missing.empty() && unexpected.empty() && mismatched.empty();
  }
};

// Copies the file's tensors into module.named_parameters() and
// named_buffers() (recursively, dotted names, as state_dict()), without
// recording autograd history, onto each parameter's own device.
// strict: any missing, unexpected or mismatched key throws before anything
// is copied -- missing: ST_ERR_NOT_FOUND, unexpected: ST_ERR_INVALID_ARGUMENT,
// mismatched: ST_ERR_INVALID_TENSOR_INFO; name() is the first such key.
// Not strict: copies every key that matches and reports the rest.
ST_TORCH_API LoadReport load_into(torch::nn::Module &module, const std::string &path,
                     bool strict = true, const LoadOptions &options = {});

// The module's parameters then buffers under their state_dict names.
ST_TORCH_API TensorDict state_dict(const torch::nn::Module &module);

// ==========================================================================
// Writing
// ==========================================================================

// What a save does with tensors that share memory (docs/RECORD.md, "Shared
// memory"; the same three policies as the Python package). Two tensors alias
// exactly when they have the same device, storage, storage offset, shape,
// strides and dtype; they overlap when their bytes in one storage intersect.
enum class Aliasing {
  // Any overlap throws Error(ST_ERR_INVALID_ARGUMENT) naming a tensor.
  error,
  // Exact aliases (tied weights) are stored once, under the first name in
  // order; the other names are recorded in the structure record
  // ("torch_safetensors.structure"), so safetensors::load and Python's
  // torch.load give them back sharing one storage. Other overlaps are stored
  // as separate copies. Without exact aliases the file has no record and is
  // byte-identical to the reference writer's.
  tie,
  // Every name is stored as its own copy.
  copy,
};

struct SaveOptions {
  // fsync the file and its directory (atomic rename happens either way).
  bool durable = true;
  Aliasing aliasing = Aliasing::tie;
};

// Writes tensors (any device, any strides; copied to contiguous CPU memory
// when needed) with metadata. Byte-identical to the reference writer when no
// tensors are tied (see Aliasing). Throws Error with the C writer's status
// (ST_ERR_UNSUPPORTED for a dtype with no format counterpart, a sparse
// tensor, or a 0-dim F4 tensor); ST_ERR_INVALID_ARGUMENT for shared memory
// under Aliasing::error, or tied tensors when metadata already holds a
// "torch_safetensors.structure" entry.
ST_TORCH_API void save(const std::string &path, const TensorDict &tensors,
          const Metadata &metadata = {}, const SaveOptions &options = {});

// Writes the module's parameters and buffers (see state_dict()).
ST_TORCH_API void save(const std::string &path, const torch::nn::Module &module,
          const Metadata &metadata = {}, const SaveOptions &options = {});

// Serializes to bytes in memory instead of a file (options.durable unused).
ST_TORCH_API std::vector<uint8_t> save_to_bytes(const TensorDict &tensors,
                                   const Metadata &metadata = {},
                                   const SaveOptions &options = {});

// ==========================================================================
// Dtypes
// ==========================================================================

// The torch dtype of a format dtype (from the C core's table); nullopt for
// F6_E2M3 / F6_E3M2, which load as raw uint8 bytes, and for a dtype this
// LibTorch lacks.
ST_TORCH_API std::optional<at::ScalarType> to_scalar_type(st_dtype dtype);
// The format dtype a torch dtype saves as; nullopt when the format has none.
ST_TORCH_API std::optional<st_dtype> to_st_dtype(at::ScalarType type);

}  // namespace safetensors

#endif  // SAFETENSORS_TORCH_HPP
