// The LibTorch adapter: at::Tensor over st_file, and st_writer from at::Tensor.
// Narrow ATen/c10 headers only; the Module half lives in module.cpp so this
// TU stays cheap to compile.

// The owned loads run on the copy engine (st_plan_*), which is in the C API's
// experimental tier. Defined here only: torch.hpp never asks for that tier, so
// consumers of the adapter do not get it.
#define ST_EXPERIMENTAL_API
#include <safetensors/torch.hpp>

#include "alias.hpp"
#include "record.hpp"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/ScalarType.h>
#include <c10/core/Storage.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <sstream>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the format is little-endian; views would need byte swaps");

namespace safetensors {

// ==========================================================================
// Errors
// ==========================================================================

namespace {

std::string describe(st_status status, const std::string &message, uint64_t offset,
                     const std::string &name, const std::string &context) {
  std::ostringstream s;
  s << st_status_name(status) << ": " << message;
  if (offset != ST_NO_OFFSET) s << " at offset " << offset;
  if (!name.empty()) s << " name '" << name << "'";
  if (!context.empty()) s << " (" << context << ")";
  return s.str();
}

std::string error_name(const st_error &err) {
  return std::string(err.name, strnlen(err.name, sizeof err.name));
}

[[noreturn]] void fail(const st_error &err, const std::string &context) {
  throw Error(err, context);
}

// Runs a C call that fills an st_error, throwing on failure.
template <typename F>
void check(const std::string &context, F &&call) {
  st_error err{};
  st_status s = call(&err);
  if (s != ST_OK) {
    if (err.code != s) {  // a call without an error record
      err = st_error{};
      err.code = s;
      err.message = st_status_str(s);
      err.offset = ST_NO_OFFSET;
    }
    fail(err, context);
  }
}

}  // namespace

Error::Error(st_status status, const std::string &message, uint64_t offset,
             std::string name, int sys_errno)
    : std::runtime_error(describe(status, message, offset, name, {})),
      status_(status), offset_(offset), name_(std::move(name)),
      sys_errno_(sys_errno) {}

Error::Error(const st_error &err, const std::string &context)
    : std::runtime_error(describe(err.code, err.message ? err.message : st_status_str(err.code),
                                  err.offset, error_name(err), context)),
      status_(err.code), offset_(err.offset), name_(error_name(err)),
      sys_errno_(err.sys_errno) {}

// ==========================================================================
// TensorDict
// ==========================================================================

TensorDict::TensorDict(std::initializer_list<value_type> items) {
  for (const auto &it : items) insert(it.first, it.second);
}

void TensorDict::insert(std::string name, at::Tensor tensor) {
  if (index_.count(name))
    throw Error(ST_ERR_DUPLICATE_KEY, "a tensor of this name is already present",
                ST_NO_OFFSET, name);
  index_.emplace(name, items_.size());
  items_.emplace_back(std::move(name), std::move(tensor));
}

const at::Tensor &TensorDict::at(std::string_view name) const {
  auto it = index_.find(std::string(name));
  if (it == index_.end())
    throw Error(ST_ERR_NOT_FOUND, "no tensor of this name", ST_NO_OFFSET, std::string(name));
  return items_[it->second].second;
}

at::Tensor &TensorDict::at(std::string_view name) {
  return const_cast<at::Tensor &>(static_cast<const TensorDict &>(*this).at(name));
}

bool TensorDict::contains(std::string_view name) const {
  return index_.count(std::string(name)) != 0;
}

std::vector<std::string> TensorDict::keys() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto &it : items_) out.push_back(it.first);
  return out;
}

// ==========================================================================
// Dtypes
// ==========================================================================

namespace {

// File dtype -> the scalar type its tensors load as (F6: Byte, raw bytes),
// matched by name against the C core's table once: no dtype facts in C++.
// nullopt where this LibTorch lacks the type.
using LoadTypes = std::array<std::optional<at::ScalarType>, ST_DTYPE_COUNT>;

LoadTypes match_load_types() {
  LoadTypes out;
  for (int d = 0; d < ST_DTYPE_COUNT; ++d) {
    const char *name = st_dtype_c10_name(static_cast<st_dtype>(d));
    for (int s = 0; name && s < static_cast<int>(at::ScalarType::NumOptions); ++s) {
      auto type = static_cast<at::ScalarType>(s);
      if (std::strcmp(c10::toString(type), name) == 0) {
        out[static_cast<size_t>(d)] = type;
        break;
      }
    }
  }
  return out;
}

std::optional<at::ScalarType> load_type(st_dtype dtype) {
  static const LoadTypes types = match_load_types();
  auto d = static_cast<size_t>(dtype);
  return d < types.size() ? types[d] : std::nullopt;
}

}  // namespace

std::optional<at::ScalarType> to_scalar_type(st_dtype dtype) {
  if (st_dtype_torch_values(dtype) == 0) return std::nullopt;  // F6: no torch element
  return load_type(dtype);
}

std::optional<st_dtype> to_st_dtype(at::ScalarType type) {
  const char *name = c10::toString(type);
  st_dtype out;
  if (st_dtype_from_torch_name(name, std::strlen(name), &out) != ST_OK) return std::nullopt;
  return out;
}

// ==========================================================================
// Reading
// ==========================================================================

namespace {

// The DataPtr context of a zero-copy tensor: one reference to the open file.
struct FileRef {
  std::shared_ptr<st_file> file;
};

void release_file_ref(void *ctx) { delete static_cast<FileRef *>(ctx); }

std::string tensor_name(const st_tensor_info &info) {
  return std::string(info.name, info.name_len);
}

// How tensor index of the file looks in torch: the C core's view policy
// (st_tensor_torch_view) with the sizes spelled for ATen.
struct TorchView {
  at::ScalarType type;
  std::vector<int64_t> sizes;
  uint64_t nbytes;
  bool copy;  // ST_VIEW_COPY: never view the bytes where they lie
};

TorchView torch_view(const st_file *f, size_t index, const st_tensor_info &info) {
  st_torch_view v;
  if (st_tensor_torch_view(f, index, &v) != ST_OK)
    throw Error(ST_ERR_INVALID_ARGUMENT, "no torch view", ST_NO_OFFSET, tensor_name(info));
  auto type = load_type(v.dtype);
  if (!type)
    throw Error(ST_ERR_UNSUPPORTED, std::string("this LibTorch has no ") + v.c10_name,
                ST_NO_OFFSET, tensor_name(info));
  TorchView out{*type, {}, info.data_end - info.data_begin, (v.flags & ST_VIEW_COPY) != 0};
  if (v.flags & ST_VIEW_FLAT) {
    out.sizes.push_back(static_cast<int64_t>(v.numel));
  } else {
    out.sizes.assign(info.shape, info.shape + info.rank);
    if (info.rank > 0) out.sizes.back() = static_cast<int64_t>(v.last_dim);
  }
  for (int64_t d : out.sizes)
    if (d < 0)  // a dimension over INT64_MAX
      throw Error(ST_ERR_VALIDATION_OVERFLOW, "dimension too large for torch", ST_NO_OFFSET,
                  tensor_name(info));
  return out;
}

}  // namespace

File::File(const std::string &path, Backend backend, bool populate, bool aliases)
    : path_(path) {
  st_open_options opts;
  st_open_options_init(&opts);
  opts.backend = backend == Backend::pread ? ST_BACKEND_PREAD : ST_BACKEND_MMAP;
  if (backend == Backend::mmap) {
    opts.flags |= ST_OPEN_MAP_PRIVATE_WRITABLE;
    if (populate) opts.flags |= ST_OPEN_MAP_POPULATE;
  }
  st_file *raw = nullptr;
  check(path, [&](st_error *e) { return st_open(path.c_str(), &opts, &raw, e); });
  handle_ = std::shared_ptr<st_file>(raw, &st_close);

  if (!aliases) return;
  // Dropped tied names recorded as metadata (as Python's _alias.restore
  // reads them): the kept name must be stored; a stored name is never
  // shadowed.
  for (size_t k = 0, n = st_metadata_count(raw); k < n; ++k) {
    const char *key, *value;
    size_t key_len, value_len, index;
    if (st_metadata_get(raw, k, &key, &key_len, &value, &value_len) != ST_OK) continue;
    std::string_view name(key, key_len);
    if (name.substr(0, detail::kAliasKeyPrefix.size()) != detail::kAliasKeyPrefix) continue;
    name.remove_prefix(detail::kAliasKeyPrefix.size());
    if (st_tensor_find(raw, value, value_len, &index) == ST_OK &&
        st_tensor_find(raw, name.data(), name.size(), &index) != ST_OK)
      aliases_.emplace(std::string(name), std::string(value, value_len));
  }
  const char *record = nullptr;
  size_t record_len = 0;
  if (st_metadata_find(raw, detail::kStructureKey.data(), detail::kStructureKey.size(), &record,
                       &record_len) != ST_OK)
    return;
  try {
    // The record's path names win over a metadata entry of the same name.
    for (auto &[name, stored] : detail::record_aliases(std::string_view(record, record_len), raw))
      aliases_[name] = std::move(stored);
  } catch (const detail::RecordError &r) {
    st_error err{};
    err.code = r.status;
    err.message = r.message.c_str();
    err.offset = ST_NO_OFFSET;
    std::memcpy(err.name, detail::kStructureKey.data(),
                std::min(detail::kStructureKey.size(), sizeof err.name - 1));
    throw Error(err, path);
  }
}

const st_file *File::checked() const {
  if (!handle_)
    throw Error(ST_ERR_INVALID_ARGUMENT, "the file is closed", ST_NO_OFFSET, {});
  return handle_.get();
}

void File::close() noexcept { handle_.reset(); }

Backend File::backend() const {
  return st_file_backend(checked()) == ST_BACKEND_PREAD ? Backend::pread : Backend::mmap;
}

size_t File::size() const { return st_tensor_count(checked()); }

std::vector<std::string> File::names() const {
  const st_file *f = checked();
  std::vector<std::string> out;
  out.reserve(st_tensor_count(f));
  for (size_t i = 0; i < st_tensor_count(f); ++i) {
    st_tensor_info info;
    check(path_, [&](st_error *) { return st_tensor_get(f, i, &info); });
    out.push_back(tensor_name(info));
  }
  return out;
}

size_t File::index_of(std::string_view name) const {
  const st_file *f = checked();
  size_t index;
  if (st_tensor_find(f, name.data(), name.size(), &index) == ST_OK) return index;
  auto alias = aliases_.find(std::string(name));
  if (alias != aliases_.end() &&
      st_tensor_find(f, alias->second.data(), alias->second.size(), &index) == ST_OK)
    return index;
  throw Error(ST_ERR_NOT_FOUND, st_status_str(ST_ERR_NOT_FOUND), ST_NO_OFFSET,
              std::string(name));
}

std::string File::resolve(std::string_view name) const {
  st_tensor_info info;
  size_t index = index_of(name);
  check(path_, [&](st_error *) { return st_tensor_get(handle_.get(), index, &info); });
  return tensor_name(info);
}

bool File::contains(std::string_view name) const {
  size_t index;
  return st_tensor_find(checked(), name.data(), name.size(), &index) == ST_OK ||
         aliases_.count(std::string(name)) != 0;
}

std::pair<std::string, std::vector<int64_t>> File::info(std::string_view name) const {
  st_tensor_info info;
  size_t index = index_of(name);
  check(path_, [&](st_error *) { return st_tensor_get(handle_.get(), index, &info); });
  std::vector<int64_t> shape(info.shape, info.shape + info.rank);
  return {st_dtype_name(info.dtype), std::move(shape)};
}

Metadata File::metadata() const {
  const st_file *f = checked();
  Metadata out;
  for (size_t k = 0; k < st_metadata_count(f); ++k) {
    const char *key, *value;
    size_t key_len, value_len;
    check(path_, [&](st_error *) {
      return st_metadata_get(f, k, &key, &key_len, &value, &value_len);
    });
    out.emplace(std::string(key, key_len), std::string(value, value_len));
  }
  return out;
}

std::optional<std::string> File::metadata(std::string_view key) const {
  const char *value;
  size_t value_len;
  if (st_metadata_find(checked(), key.data(), key.size(), &value, &value_len) != ST_OK)
    return std::nullopt;
  return std::string(value, value_len);
}

const std::map<std::string, std::string> &File::aliases() const { return aliases_; }

at::Tensor File::load_index(size_t index, const LoadOptions &options) const {
  const st_file *f = checked();
  st_tensor_info info;
  check(path_, [&](st_error *) { return st_tensor_get(f, index, &info); });
  TorchView v = torch_view(f, index, info);

  if (st_file_backend(f) == ST_BACKEND_MMAP && !options.copy && !v.copy) {
    const void *data = nullptr;
    check(path_, [&](st_error *) { return st_tensor_data(f, index, &data); });
    // The mapping is private and writable: casting away const is the
    // contract of ST_OPEN_MAP_PRIVATE_WRITABLE.
    c10::DataPtr ptr(const_cast<void *>(data), new FileRef{handle_}, &release_file_ref,
                     c10::Device(c10::kCPU));
    c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(v.nbytes),
                         std::move(ptr), /*allocator=*/nullptr, /*resizable=*/false);
    at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
        std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
        c10::scalarTypeToTypeMeta(v.type));
    t.unsafeGetTensorImpl()->set_sizes_contiguous(v.sizes);
    return options.device.is_cpu() ? t : t.to(options.device);
  }
  // Owned memory (aligned by the allocator): the copy engine reads straight
  // into the tensor.
  at::Tensor t = at::empty(v.sizes, at::TensorOptions().dtype(v.type));
  if (v.nbytes > 0) {
    check(path_, [&](st_error *e) {
      return st_tensor_read(f, index, t.data_ptr(), static_cast<size_t>(v.nbytes), e);
    });
  }
  return options.device.is_cpu() ? t : t.to(options.device);
}

at::Tensor File::tensor(std::string_view name, const LoadOptions &options) const {
  return load_index(index_of(name), options);
}

TensorDict File::tensors(const LoadOptions &options) const {
  const st_file *f = checked();
  size_t n = st_tensor_count(f);
  std::vector<std::string> names = this->names();
  std::vector<bool> wanted(n);
  for (size_t i = 0; i < n; ++i) wanted[i] = !options.filter || options.filter(names[i]);
  // Aliases are loaded when their own name passes the filter.
  std::multimap<size_t, std::string> alias_of;
  for (const auto &a : aliases_) {
    if (options.filter && !options.filter(a.first)) continue;
    size_t index;
    if (st_tensor_find(f, a.second.data(), a.second.size(), &index) == ST_OK)
      alias_of.emplace(index, a.first);
  }

  std::vector<at::Tensor> loaded(n);
  bool zero_copy = st_file_backend(f) == ST_BACKEND_MMAP && !options.copy;
  LoadOptions cpu = options;
  cpu.device = c10::Device(c10::kCPU);
  if (zero_copy) {
    for (size_t i = 0; i < n; ++i)
      if (wanted[i] || alias_of.count(i)) loaded[i] = load_index(i, cpu);
  } else {
    // One plan for every owned tensor, so the engine reads them in parallel.
    st_plan *raw = nullptr;
    check(path_, [&](st_error *e) { return st_plan_new(f, nullptr, &raw, e); });
    std::unique_ptr<st_plan, void (*)(st_plan *)> plan(raw, &st_plan_free);
    for (size_t i = 0; i < n; ++i) {
      if (!wanted[i] && !alias_of.count(i)) continue;
      st_tensor_info info;
      check(path_, [&](st_error *) { return st_tensor_get(f, i, &info); });
      TorchView v = torch_view(f, i, info);
      loaded[i] = at::empty(v.sizes, at::TensorOptions().dtype(v.type));
      if (v.nbytes == 0) continue;
      check(path_, [&](st_error *e) {
        return st_plan_add_tensor(plan.get(), i, loaded[i].data_ptr(),
                                  static_cast<size_t>(v.nbytes), e);
      });
    }
    check(path_, [&](st_error *e) {
      return st_plan_execute(plan.get(), nullptr, nullptr, e);
    });
  }

  TensorDict out;
  for (size_t i = 0; i < n; ++i) {
    if (!loaded[i].defined()) continue;
    at::Tensor t = options.device.is_cpu() ? loaded[i] : loaded[i].to(options.device);
    if (wanted[i]) out.insert(names[i], t);
    auto range = alias_of.equal_range(i);
    for (auto it = range.first; it != range.second; ++it) out.insert(it->second, t);
  }
  return out;
}

TensorDict load(const std::string &path, const LoadOptions &options) {
  return File(path, options.backend, options.populate, options.aliases).tensors(options);
}

Metadata load_metadata(const std::string &path) {
  return File(path, Backend::pread).metadata();
}

// ==========================================================================
// Writing
// ==========================================================================

namespace {

struct WriterDeleter {
  void operator()(st_writer *w) const { st_writer_free(w); }
};

void add_metadata(st_writer *w, const std::string &key, const std::string &value) {
  check({}, [&](st_error *e) {
    return st_writer_add_metadata(w, key.data(), key.size(), value.data(), value.size(), e);
  });
}

// Adds every tensor to a new writer, as the aliasing policy says; keeps the
// host copies it needs alive in keep until the write ends.
std::unique_ptr<st_writer, WriterDeleter> make_writer(const TensorDict &tensors,
                                                      const Metadata &metadata,
                                                      const SaveOptions &options,
                                                      std::vector<at::Tensor> &keep) {
  st_writer *raw = nullptr;
  check({}, [&](st_error *e) { return st_writer_new(nullptr, &raw, e); });
  std::unique_ptr<st_writer, WriterDeleter> w(raw);
  for (const auto &m : metadata) add_metadata(w.get(), m.first, m.second);

  // Tied names are stored once and recorded as aliases of the kept name.
  std::vector<size_t> owner = detail::resolve_aliasing(tensors, options.aliasing);
  std::vector<std::pair<std::string, std::string>> nodes;
  bool tied = false;
  for (size_t i = 0; i < owner.size(); ++i) {
    nodes.emplace_back((tensors.begin() + static_cast<ptrdiff_t>(i))->first,
                       (tensors.begin() + static_cast<ptrdiff_t>(owner[i]))->first);
    tied |= owner[i] != i;
  }
  if (tied) {
    std::string key(detail::kStructureKey);
    if (metadata.count(key))
      throw Error(ST_ERR_INVALID_ARGUMENT,
                  "the metadata already holds a structure record, and tied tensors need one",
                  ST_NO_OFFSET, key);
    add_metadata(w.get(), key, detail::flat_record(nodes));
  }

  keep.reserve(tensors.size());
  for (size_t i = 0; i < owner.size(); ++i) {
    if (owner[i] != i) continue;
    const std::string &name = nodes[i].first;
    const at::Tensor &tensor = (tensors.begin() + static_cast<ptrdiff_t>(i))->second;
    if (!tensor.defined())
      throw Error(ST_ERR_INVALID_ARGUMENT, "undefined tensor", ST_NO_OFFSET, name);
    if (tensor.layout() != c10::kStrided)
      throw Error(ST_ERR_UNSUPPORTED, "only dense (strided) tensors can be saved",
                  ST_NO_OFFSET, name);
    auto dtype = to_st_dtype(tensor.scalar_type());
    if (!dtype)
      throw Error(ST_ERR_UNSUPPORTED, "dtype has no safetensors counterpart",
                  ST_NO_OFFSET, name);
    // A torch element that packs several file values (F4 pairs): the file's
    // last dimension is that many times the torch one, and a 0-dim tensor has
    // no last dimension to scale.
    const unsigned values = st_dtype_torch_values(*dtype);
    if (values > 1 && tensor.dim() == 0)
      throw Error(ST_ERR_UNSUPPORTED,
                  std::string("a 0-dim ") + st_dtype_torch_name(*dtype) + " tensor has no file shape",
                  ST_NO_OFFSET, name);
    at::Tensor host = tensor;
    if (!host.device().is_cpu()) host = host.to(c10::Device(c10::kCPU));
    if (host.is_conj()) host = host.resolve_conj();
    if (host.is_neg()) host = host.resolve_neg();
    host = host.contiguous();
    keep.push_back(host);

    std::vector<uint64_t> shape(host.sizes().begin(), host.sizes().end());
    if (values > 1) shape.back() *= values;
    uint64_t nbytes = host.nbytes();
    const void *data = nbytes ? host.const_data_ptr() : nullptr;
    check({}, [&](st_error *e) {
      return st_writer_add_tensor(w.get(), name.data(), name.size(), *dtype, shape.data(),
                                  static_cast<uint32_t>(shape.size()), data, nbytes, e);
    });
  }
  return w;
}

}  // namespace

void save(const std::string &path, const TensorDict &tensors, const Metadata &metadata,
          const SaveOptions &options) {
  std::vector<at::Tensor> keep;
  auto w = make_writer(tensors, metadata, options, keep);
  check(path, [&](st_error *e) {
    return st_writer_write_path(w.get(), path.c_str(), options.durable ? 0u : ST_WRITE_NO_FSYNC,
                                e);
  });
}

std::vector<uint8_t> save_to_bytes(const TensorDict &tensors, const Metadata &metadata,
                                   const SaveOptions &options) {
  std::vector<at::Tensor> keep;
  auto w = make_writer(tensors, metadata, options, keep);
  uint64_t size = 0;
  check({}, [&](st_error *e) { return st_writer_size(w.get(), &size, e); });
  if (size > SIZE_MAX) throw Error(ST_ERR_NOMEM, "file too large for memory");
  std::vector<uint8_t> out(static_cast<size_t>(size));
  size_t written = 0;
  check({}, [&](st_error *e) {
    return st_writer_write_memory(w.get(), out.data(), out.size(), &written, e);
  });
  out.resize(written);
  return out;
}

}  // namespace safetensors
