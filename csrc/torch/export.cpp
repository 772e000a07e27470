// Exported programs (include/safetensors/export.hpp): an AOTInductor package
// compiled without its weights, given the tensors of a safetensors file as
// user-managed constants after every constant was checked against the
// manifest and the package. The manifest is read by the project's one strict
// JSON reader (csrc/common/json.h).
#include <safetensors/export.hpp>

#include "json.hpp"

#include <ATen/core/Tensor.h>
#include <ATen/DynamicLibrary.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <caffe2/core/common.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>

namespace safetensors {

// ==========================================================================
// Errors
// ==========================================================================

const char *export_errc_name(ExportErrc kind) noexcept {
  switch (kind) {
    case ExportErrc::missing_constant: return "missing constant";
    case ExportErrc::unexpected_constant: return "unexpected constant";
    case ExportErrc::shape_mismatch: return "shape mismatch";
    case ExportErrc::dtype_mismatch: return "dtype mismatch";
    case ExportErrc::torch_version: return "torch version mismatch";
    case ExportErrc::weights_baked_in: return "weights baked in";
    case ExportErrc::bad_manifest: return "bad manifest";
    case ExportErrc::bad_package: return "bad package";
  }
  return "";
}

ExportError::ExportError(ExportErrc kind, st_status status, const std::string &message,
                         std::string name)
    : Error(status, std::string(export_errc_name(kind)) + ": " + message, ST_NO_OFFSET,
            std::move(name)),
      kind_(kind) {}

namespace {

constexpr std::string_view kManifestFormat = "torch_safetensors.export";
constexpr std::string_view kManifestKey = "torch_safetensors.export";
constexpr uint32_t kManifestMaxDepth = 64;

[[noreturn]] void bad_manifest(const std::string &context, const std::string &message,
                               st_status status = ST_ERR_HEADER_DESERIALIZATION,
                               std::string name = {}) {
  throw ExportError(ExportErrc::bad_manifest, status,
                    (context.empty() ? std::string() : context + ": ") + message,
                    std::move(name));
}

[[noreturn]] void bad_package(const std::string &path, const std::string &message) {
  throw ExportError(ExportErrc::bad_package, ST_ERR_UNSUPPORTED, path + ": " + message);
}

std::string shape_text(const std::vector<int64_t> &shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

// The release part of a torch version ("2.13.0" of "2.13.0+cu128").
std::string release_of(const std::string &version) {
  return version.substr(0, version.find('+'));
}

std::string join(const std::string &dir, const std::string &name) {
  if (name.empty() || name.front() == '/' || dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

}  // namespace

// ==========================================================================
// The manifest
// ==========================================================================

ExportManifest parse_export_manifest(const std::string &json, const std::string &context) {
  detail::Json doc(json, kManifestMaxDepth);
  if (!doc.ok() || doc.count() == 0 || !doc.is_object(0))
    bad_manifest(context, "not a JSON object");
  if (doc.has_duplicate_key()) bad_manifest(context, "a key appears twice");

  auto string_field = [&](size_t obj, std::string_view key, bool required) -> std::string {
    size_t v = doc.find(obj, key);
    if (v == detail::Json::npos) {
      if (required) bad_manifest(context, "no \"" + std::string(key) + "\"");
      return {};
    }
    if (!doc.is_string(v)) bad_manifest(context, "\"" + std::string(key) + "\" is not a string");
    return doc.string(v);
  };

  if (string_field(0, "format", true) != kManifestFormat)
    bad_manifest(context, "\"format\" is not \"" + std::string(kManifestFormat) + "\"");
  size_t version = doc.find(0, "version");
  if (version == detail::Json::npos || !doc.is_integer(version))
    bad_manifest(context, "\"version\" is not an integer");
  if (doc.raw(version) != "1")
    bad_manifest(context, "version " + std::string(doc.raw(version)) + " (this reader knows 1)",
                 ST_ERR_UNSUPPORTED);

  ExportManifest m;
  m.torch = string_field(0, "torch", true);
  m.package = string_field(0, "package", true);
  m.weights = string_field(0, "weights", true);
  m.weights_sha256 = string_field(0, "weights_sha256", false);

  size_t constants = doc.find(0, "constants");
  if (constants == detail::Json::npos || !doc.is_object(constants))
    bad_manifest(context, "\"constants\" is not an object");
  for (size_t key : doc.children(constants)) {
    std::string fqn = doc.string(key);
    size_t entry = key + 1;
    if (!doc.is_object(entry)) bad_manifest(context, "constant is not an object", ST_ERR_HEADER_DESERIALIZATION, fqn);
    ExportedConstant c;
    size_t dtype = doc.find(entry, "dtype");
    size_t shape = doc.find(entry, "shape");
    size_t tensor = doc.find(entry, "tensor");
    st_dtype parsed;
    if (dtype == detail::Json::npos || !doc.is_string(dtype) ||
        st_dtype_from_name(doc.string(dtype).c_str(), doc.string(dtype).size(), &parsed) != ST_OK)
      bad_manifest(context, "\"dtype\" is not a format dtype name", ST_ERR_HEADER_DESERIALIZATION, fqn);
    c.dtype = doc.string(dtype);
    if (shape == detail::Json::npos || !doc.is_array(shape))
      bad_manifest(context, "\"shape\" is not an array", ST_ERR_HEADER_DESERIALIZATION, fqn);
    for (size_t d : doc.children(shape)) {
      std::string_view raw = doc.raw(d);
      int64_t n = -1;
      if (!doc.is_integer(d) ||
          std::from_chars(raw.data(), raw.data() + raw.size(), n).ptr != raw.data() + raw.size() ||
          n < 0)
        bad_manifest(context, "\"shape\" holds a value that is not a size", ST_ERR_HEADER_DESERIALIZATION, fqn);
      c.shape.push_back(n);
    }
    if (tensor == detail::Json::npos || !doc.is_string(tensor))
      bad_manifest(context, "\"tensor\" is not a string", ST_ERR_HEADER_DESERIALIZATION, fqn);
    c.tensor = doc.string(tensor);
    m.constants.emplace(std::move(fqn), std::move(c));
  }
  return m;
}

// ==========================================================================
// The package
// ==========================================================================

namespace detail {

// One constant as the package's model reports it.
struct PackageConstant {
  std::string fqn;
  at::ScalarType dtype;
  size_t nbytes;
};

// AOTIModelContainerRunner exposes names, FQNs and dtypes but not whether a
// constant is folded (computed by the package, never given) nor its byte
// size; both come from the model library's C interface, whose handle the
// runner keeps in protected members, reached here through a derived class.
struct RunnerInternals : torch::inductor::AOTIModelContainerRunner {
  static std::vector<PackageConstant> constants(torch::inductor::AOTIModelContainerRunner &r,
                                                const std::string &path) {
    auto handle = r.*(&RunnerInternals::container_handle_);
    auto &so = *(r.*(&RunnerInternals::model_so_));
    auto count = r.*(&RunnerInternals::get_num_constants_func_);
    auto fqn_of = r.*(&RunnerInternals::get_constant_original_fqn_func_);
    auto dtype_of = r.*(&RunnerInternals::get_constant_dtype_func_);
    auto folded_of = reinterpret_cast<decltype(&AOTInductorModelContainerGetConstantFromFolded)>(
        so.sym("AOTInductorModelContainerGetConstantFromFolded"));
    auto size_of = reinterpret_cast<decltype(&AOTInductorModelContainerGetConstantDataSize)>(
        so.sym("AOTInductorModelContainerGetConstantDataSize"));
    size_t n = 0;
    if (count(handle, &n) != AOTI_RUNTIME_SUCCESS) bad_package(path, "cannot count constants");
    std::vector<PackageConstant> out;
    for (size_t i = 0; i < n; ++i) {
      const char *fqn = nullptr;
      int32_t dtype = 0;
      bool folded = false;
      size_t nbytes = 0;
      if (folded_of(handle, i, &folded) != AOTI_RUNTIME_SUCCESS ||
          fqn_of(handle, i, &fqn) != AOTI_RUNTIME_SUCCESS ||
          dtype_of(handle, i, &dtype) != AOTI_RUNTIME_SUCCESS ||
          size_of(handle, i, &nbytes) != AOTI_RUNTIME_SUCCESS)
        bad_package(path, "cannot describe constant " + std::to_string(i));
      if (folded || fqn == nullptr || *fqn == '\0') continue;
      out.push_back({fqn, static_cast<at::ScalarType>(dtype), nbytes});
    }
    return out;
  }
};

// What each constant must be: from the manifest (checked against the
// package) or, without one, from the package alone.
struct Expected {
  std::string fqn;
  std::string dtype;                          // format dtype name
  std::optional<std::vector<int64_t>> shape;  // nullopt: only nbytes known
  std::string tensor;                         // name in the weights file
  size_t nbytes;
};

namespace {

std::string format_dtype(at::ScalarType t) {
  std::optional<st_dtype> d = to_st_dtype(t);
  if (d) return st_dtype_name(*d);
  // Appended piecewise: gcc 12 -O3 warns (-Wrestrict, a false positive, GCC
  // bug 105651) on "literal" + std::string&&.
  std::string out = "(";
  out.append(c10::toString(t)).append(")");
  return out;
}

// The bytes of a tensor of that dtype and shape; UINT64_MAX when a manifest's
// shape overflows.
uint64_t bytes_of(const std::string &dtype, const std::vector<int64_t> &shape) {
  st_dtype d;
  if (st_dtype_from_name(dtype.c_str(), dtype.size(), &d) != ST_OK) return 0;
  uint64_t bits = st_dtype_bits(d);
  for (int64_t s : shape)
    if (__builtin_mul_overflow(bits, static_cast<uint64_t>(s), &bits)) return UINT64_MAX;
  return bits / 8 + (bits % 8 != 0);
}

// Whether a tensor of nbytes is what a package constant of data_size bytes
// holds: the package records its storage's size, rounded up to 64 bytes for
// CPU constants (torch/_inductor/codegen/cpp_wrapper_cpu.py).
bool size_fits(uint64_t nbytes, uint64_t data_size) {
  constexpr uint64_t kAlign = 64;
  return nbytes <= data_size && data_size <= (nbytes + kAlign - 1) / kAlign * kAlign;
}

std::vector<Expected> expected_constants(const std::vector<PackageConstant> &package,
                                         const ExportManifest *manifest,
                                         const std::string &context) {
  std::vector<Expected> out;
  for (const PackageConstant &p : package) {
    Expected e{p.fqn, format_dtype(p.dtype), std::nullopt, p.fqn, p.nbytes};
    if (manifest) {
      auto it = manifest->constants.find(p.fqn);
      if (it == manifest->constants.end())
        bad_manifest(context, "a constant of the package is not in the manifest",
                     ST_ERR_HEADER_DESERIALIZATION, p.fqn);
      if (it->second.dtype != e.dtype)
        bad_manifest(context, "manifest dtype " + it->second.dtype + ", package " + e.dtype,
                     ST_ERR_HEADER_DESERIALIZATION, p.fqn);
      if (bytes_of(it->second.dtype, it->second.shape) > p.nbytes)
        bad_manifest(context, "manifest shape " + shape_text(it->second.shape) + " is " +
                         std::to_string(bytes_of(it->second.dtype, it->second.shape)) +
                         " bytes, over the package's constant's " + std::to_string(p.nbytes),
                     ST_ERR_HEADER_DESERIALIZATION, p.fqn);
      e.shape = it->second.shape;
      e.tensor = it->second.tensor;
    }
    out.push_back(std::move(e));
  }
  if (manifest) {
    std::set<std::string> names;
    for (const Expected &e : out) names.insert(e.fqn);
    for (const auto &[fqn, c] : manifest->constants)
      if (!names.count(fqn))
        bad_manifest(context, "a constant of the manifest is not in the package",
                     ST_ERR_HEADER_DESERIALIZATION, fqn);
  }
  std::sort(out.begin(), out.end(),
            [](const Expected &a, const Expected &b) { return a.fqn < b.fqn; });
  return out;
}

// Checks the weights file against the constants; throws the first failure of
// the first class found (missing, unexpected, dtype, shape), with counts.
void validate(const std::vector<Expected> &expected, const File &file, const std::string &path) {
  std::vector<std::string> missing, unexpected, dtype, shape;
  std::string dtype_detail, shape_detail;
  std::set<std::string> used;
  for (const Expected &e : expected) {
    if (!file.contains(e.tensor)) {
      missing.push_back(e.fqn);
      continue;
    }
    used.insert(file.resolve(e.tensor));
    auto [file_dtype, file_shape] = file.info(e.tensor);
    if (file_dtype != e.dtype) {
      if (dtype.empty()) dtype_detail = "file " + file_dtype + ", package " + e.dtype;
      dtype.push_back(e.fqn);
    } else if (e.shape ? file_shape != *e.shape : !size_fits(bytes_of(file_dtype, file_shape),
                                                             e.nbytes)) {
      if (shape.empty())
        shape_detail = "file " + shape_text(file_shape) + ", package " +
                       (e.shape ? shape_text(*e.shape)
                                : std::to_string(e.nbytes) + " bytes (rounded up to 64)");
      shape.push_back(e.fqn);
    }
  }
  for (const std::string &name : file.names())
    if (!used.count(name)) unexpected.push_back(name);

  auto count = [](const std::vector<std::string> &v, const char *what) {
    return " (" + std::to_string(v.size()) + " " + what + ")";
  };
  if (!missing.empty())
    throw ExportError(ExportErrc::missing_constant, ST_ERR_NOT_FOUND,
                      "a constant of the package is not in " + path + count(missing, "missing"),
                      missing.front());
  if (!unexpected.empty())
    throw ExportError(ExportErrc::unexpected_constant, ST_ERR_INVALID_ARGUMENT,
                      "a tensor of " + path + " is no constant of the package" +
                          count(unexpected, "unexpected") +
                          "; a constant inductor inlined at compile time (a 1-D tensor of at "
                          "most 8 values) is not taken: export with "
                          "always_keep_tensor_constants=True",
                      unexpected.front());
  if (!dtype.empty())
    throw ExportError(ExportErrc::dtype_mismatch, ST_ERR_INVALID_TENSOR_INFO,
                      dtype_detail + " in " + path + count(dtype, "mismatched"), dtype.front());
  if (!shape.empty())
    throw ExportError(ExportErrc::shape_mismatch, ST_ERR_INVALID_TENSOR_INFO,
                      shape_detail + " in " + path + count(shape, "mismatched"), shape.front());
}

}  // namespace

struct ExportAccess {
  static ExportedProgram open(const std::string &package_path, const std::string &weights_path,
                              const ExportManifest *manifest, const std::string &context,
                              const ExportOptions &options);
};

}  // namespace detail

struct ExportedProgram::Impl {
  // The tensors the package's constants view (user-managed): the active set,
  // and the one the inactive buffer still names until the next swap. Declared
  // before the loader, so that they outlive it.
  std::unordered_map<std::string, at::Tensor> active, previous;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  ExportManifest manifest;
  bool has_manifest = false;
  std::vector<detail::Expected> expected;
  ExportOptions options;
  c10::Device device = c10::Device(c10::kCPU);
  std::string weights_path;

  // Gives the package its constants. AOTInductor keeps a reference to each
  // user-managed tensor that it never drops (LibTorch 2.13), which would keep
  // every weights file mapped until the process exits: it is given views
  // that do not own their memory, and this object owns the tensors instead.
  void give(const std::unordered_map<std::string, at::Tensor> &tensors, bool use_inactive) {
    std::unordered_map<std::string, at::Tensor> views;
    for (const auto &[fqn, t] : tensors)
      views.emplace(fqn, at::from_blob(t.data_ptr(), t.sizes(), t.strides(), t.options()));
    loader->load_constants(views, use_inactive, /*check_full_update=*/true,
                           options.user_managed);
  }

  // Opens and validates a weights file, then loads its tensors onto the
  // device: one tensor per stored name, shared by tied constants.
  std::unordered_map<std::string, at::Tensor> read(const std::string &path) const {
    File file(path, options.backend);
    detail::validate(expected, file, path);
    // A weights file that says which package it fits must say this one.
    if (std::optional<std::string> record = file.metadata(kManifestKey); record && has_manifest) {
      const std::string context = path + " metadata \"" + std::string(kManifestKey) + "\"";
      if (parse_export_manifest(*record, context).constants != manifest.constants)
        bad_manifest(context, "lists other constants than " + manifest.package + "'s manifest");
    }
    LoadOptions lo;
    lo.device = device;
    std::unordered_map<std::string, at::Tensor> stored, out;
    for (const detail::Expected &e : expected) {
      std::string name = file.resolve(e.tensor);
      auto it = stored.find(name);
      if (it == stored.end()) it = stored.emplace(name, file.tensor(name, lo)).first;
      out.emplace(e.fqn, it->second);
    }
    return out;
  }
};

namespace detail {

ExportedProgram ExportAccess::open(const std::string &package_path,
                                   const std::string &weights_path,
                                   const ExportManifest *manifest, const std::string &context,
                                   const ExportOptions &options) {
  if (manifest) {
    const std::string runtime = caffe2::GetBuildOptions().at("TORCH_VERSION");
    if (release_of(manifest->torch) != release_of(runtime))
      throw ExportError(ExportErrc::torch_version, ST_ERR_UNSUPPORTED,
                        package_path + " was compiled with torch " + manifest->torch +
                            ", this process runs LibTorch " + runtime +
                            ": compile the package again with torch " + runtime);
  }

  auto impl = std::make_unique<ExportedProgram::Impl>();
  impl->options = options;
  try {
    impl->loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        package_path, "model", /*run_single_threaded=*/false, options.num_runners,
        options.device && options.device->has_index() ? options.device->index()
                                                      : c10::DeviceIndex(-1));
  } catch (const c10::Error &e) {
    bad_package(package_path, e.what_without_backtrace());
  } catch (const std::exception &e) {
    bad_package(package_path, e.what());
  }
  // The device the package was compiled for; nothing has run on it yet.
  const std::string device_key = impl->loader->get_metadata()["AOTI_DEVICE_KEY"];
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(device_key);
  } catch (const std::exception &) {
    bad_package(package_path, "unknown device \"" + device_key + "\"");
  }
  if (options.device) {
    if (options.device->type() != device.type())
      bad_package(package_path, "compiled for " + device_key + ", asked to run on " +
                                    options.device->str());
    device = *options.device;
  }
  if (device.is_cuda() && !device.has_index()) device.set_index(0);
  impl->device = device;
  auto *runner = impl->loader->get_runner();
  if (!runner->extract_constants_map(/*use_inactive=*/false).empty())
    throw ExportError(ExportErrc::weights_baked_in, ST_ERR_UNSUPPORTED,
                      package_path + " carries its own weights; compile it without them: "
                      "torch._inductor.aoti_compile_and_package(ep, inductor_configs={"
                      "\"aot_inductor.package_constants_in_so\": False, "
                      "\"always_keep_tensor_constants\": True}) (docs/EXPORT.md)");

  impl->expected =
      expected_constants(RunnerInternals::constants(*runner, package_path), manifest, context);
  if (manifest) {
    impl->manifest = *manifest;
    impl->has_manifest = true;
  }
  impl->active = impl->read(weights_path);
  impl->weights_path = weights_path;
  impl->give(impl->active, /*use_inactive=*/false);
  if (!options.user_managed) impl->active.clear();  // the package holds copies
  return ExportedProgram(std::move(impl));
}

}  // namespace detail

ExportedProgram open_exported(const std::string &dir, const ExportOptions &options) {
  const std::string path = join(dir, "export.json");
  std::ifstream in(path, std::ios::binary);
  if (!in) bad_manifest(path, "cannot be read", ST_ERR_IO);
  std::stringstream text;
  text << in.rdbuf();
  ExportManifest manifest = parse_export_manifest(text.str(), path);
  return detail::ExportAccess::open(join(dir, manifest.package), join(dir, manifest.weights), &manifest, path,
                      options);
}

ExportedProgram open_exported(const std::string &package_path, const std::string &weights_path,
                              const ExportOptions &options) {
  std::optional<ExportManifest> manifest;
  std::optional<std::string> record = File(weights_path, Backend::pread).metadata(kManifestKey);
  std::string context = weights_path + " metadata \"" + std::string(kManifestKey) + "\"";
  if (record) manifest = parse_export_manifest(*record, context);
  return detail::ExportAccess::open(package_path, weights_path, manifest ? &*manifest : nullptr, context,
                      options);
}

// ==========================================================================
// ExportedProgram
// ==========================================================================

ExportedProgram::ExportedProgram(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ExportedProgram::ExportedProgram(ExportedProgram &&) noexcept = default;
ExportedProgram &ExportedProgram::operator=(ExportedProgram &&) noexcept = default;
ExportedProgram::~ExportedProgram() = default;

std::vector<at::Tensor> ExportedProgram::run(const std::vector<at::Tensor> &inputs) {
  return impl_->loader->run(inputs);
}

void ExportedProgram::swap_weights(const std::string &weights_path) {
  auto next = impl_->read(weights_path);
  impl_->give(next, /*use_inactive=*/true);
  auto *runner = impl_->loader->get_runner();
  runner->swap_constant_buffer();
  impl_->weights_path = weights_path;
  if (impl_->options.user_managed) {
    impl_->previous = std::move(impl_->active);
    impl_->active = std::move(next);
  } else {
    runner->free_inactive_constant_buffer();  // the old copies
  }
}

std::vector<std::string> ExportedProgram::constant_fqns() const {
  std::vector<std::string> out;
  for (const auto &e : impl_->expected) out.push_back(e.fqn);
  return out;
}

const ExportManifest &ExportedProgram::manifest() const { return impl_->manifest; }
const std::string &ExportedProgram::weights_path() const { return impl_->weights_path; }
c10::Device ExportedProgram::device() const { return impl_->device; }

}  // namespace safetensors
