// safetensors/export.hpp -- torch.export / AOTInductor programs whose
// weights live in a safetensors file, run from C++ (no TorchScript, no
// torch::nn rewrite of the architecture).
//
//   auto prog = safetensors::open_exported("out/mlp");    // validate, load
//   std::vector<at::Tensor> y = prog.run({x});
//   prog.swap_weights("weights2.safetensors");            // validate, swap
//
// The directory (docs/EXPORT.md) holds model.pt2, an AOTInductor package
// compiled with aot_inductor.package_constants_in_so=False (its code, no
// weights), model.safetensors (one tensor per package constant) and
// export.json, the manifest: the torch version the package was compiled
// with, and every constant's fully qualified name (FQN), dtype, shape and
// tensor name in the weights file. The weights file's __metadata__ holds the
// same manifest under "torch_safetensors.export".
//
// Rules
//   - Validate, then load. open_exported and swap_weights check the torch
//     version, open the weights with the C core (a truncated or corrupt file
//     throws the core's safetensors::Error), and check every constant by
//     name, dtype and shape against the manifest and the package before the
//     package receives a tensor; nothing runs until every check passed.
//     Failures throw ExportError, whose kind() names the class.
//   - Zero-copy. With ExportOptions::user_managed (default) the package's
//     constants are the weights file's tensors themselves: on the CPU,
//     copy-on-write views of the file mapping (safetensors::load); on CUDA,
//     tensors loaded once onto the device. The loader copies nothing. The
//     program owns them: a weights file stays mapped (its CUDA tensors
//     allocated) while the program uses it, and after swap_weights until the
//     next swap_weights or the program's end.
//   - Versions. A package runs only under the torch release it was compiled
//     with (its generated code is tied to that release's runtime ABI): a
//     manifest naming another release throws kind() torch_version.
//   - Threads. run() may be called from several threads; swap_weights() not
//     concurrently with itself. A run that began before a swap finishes with
//     the old weights.
#ifndef SAFETENSORS_EXPORT_HPP
#define SAFETENSORS_EXPORT_HPP

#include <safetensors/torch.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace safetensors {

namespace detail {
struct ExportAccess;
}  // namespace detail

// ==========================================================================
// Errors
// ==========================================================================

// The failure classes of open_exported and swap_weights; numbers pinned.
enum class ExportErrc : int {
  // A constant of the package is not in the weights file.
  // status() ST_ERR_NOT_FOUND; name() is the FQN.
  missing_constant = 1,
  // The weights file holds a tensor that no constant uses.
  // status() ST_ERR_INVALID_ARGUMENT; name() is the tensor.
  unexpected_constant = 2,
  // A tensor's shape differs from its constant's.
  // status() ST_ERR_INVALID_TENSOR_INFO; name() is the FQN.
  shape_mismatch = 3,
  // A tensor's dtype differs from its constant's.
  // status() ST_ERR_INVALID_TENSOR_INFO; name() is the FQN.
  dtype_mismatch = 4,
  // The package was compiled with another torch release than the LibTorch
  // this process runs. status() ST_ERR_UNSUPPORTED.
  torch_version = 5,
  // The package carries its own weights (compiled with
  // package_constants_in_so=True). status() ST_ERR_UNSUPPORTED.
  weights_baked_in = 6,
  // export.json or the weights' manifest record is missing, is not the
  // documented JSON, or disagrees with the package (names, dtypes, sizes);
  // a weights file whose own manifest record lists other constants.
  // status() ST_ERR_HEADER_DESERIALIZATION (ST_ERR_UNSUPPORTED for a format
  // version other than 1, ST_ERR_IO when export.json cannot be read).
  bad_manifest = 7,
  // The package cannot be loaded (not an AOTInductor package, no model
  // "model", compiled for a device this LibTorch lacks). status()
  // ST_ERR_UNSUPPORTED.
  bad_package = 8,
};

// "missing constant", "unexpected constant", "shape mismatch", ... ; "" for
// a value outside the enum.
ST_TORCH_API const char *export_errc_name(ExportErrc kind) noexcept;

// what() is "<ST_ERR_NAME>: <kind name>: <message> [name '<name>']".
class ST_TORCH_API ExportError : public Error {
 public:
  ExportError(ExportErrc kind, st_status status, const std::string &message,
              std::string name = {});
  ExportErrc kind() const noexcept { return kind_; }

 private:
  ExportErrc kind_;
};

// ==========================================================================
// The manifest
// ==========================================================================

// One constant of the package, as export.json describes it.
struct ExportedConstant {
  std::string dtype;           // format dtype name: "F32", "BF16", ...
  std::vector<int64_t> shape;  // the file's shape
  std::string tensor;          // its tensor in the weights file (tied
                               // constants name the same tensor)
  bool operator==(const ExportedConstant &) const = default;
};

// export.json (docs/EXPORT.md), version 1.
struct ExportManifest {
  std::string torch;           // torch.__version__ at compile time
  std::string package;         // the package, relative to the directory
  std::string weights;         // the weights file, relative to the directory
  std::string weights_sha256;  // hex; "" in the weights' own record
  std::map<std::string, ExportedConstant> constants;  // by FQN
};

// Parses a manifest from JSON text. context names the source in messages.
// Throws ExportError(bad_manifest).
ST_TORCH_API ExportManifest parse_export_manifest(const std::string &json,
                                                  const std::string &context = {});

// ==========================================================================
// Running
// ==========================================================================

struct ExportOptions {
  // The device to run on; nullopt: the package's own device type (cuda:0 for
  // a CUDA package). Its type must be the package's.
  std::optional<c10::Device> device;
  // Hand the weights' tensors to the package without a copy (AOTInductor's
  // user-managed constants). false: the package copies them into a buffer
  // of its own, and the weights file is closed after loading.
  bool user_managed = true;
  // How the weights file is read (safetensors::Backend); pread reads every
  // tensor into memory of its own. (No populate: prefaulting the private
  // writable mapping would copy every page, the copy user_managed avoids.)
  Backend backend = Backend::mmap;
  // Models the package runs concurrently (AOTInductor's num_runners).
  size_t num_runners = 1;
};

// A loaded AOTInductor package with its constants set. Move-only.
class ST_TORCH_API ExportedProgram {
 public:
  ExportedProgram(ExportedProgram &&) noexcept;
  ExportedProgram &operator=(ExportedProgram &&) noexcept;
  ~ExportedProgram();

  // Runs the program on its flattened tensor inputs (on device()); returns
  // its flattened outputs. Errors from the package are c10::Error.
  std::vector<at::Tensor> run(const std::vector<at::Tensor> &inputs);

  // Replaces every constant with the tensors of another weights file: opens
  // and validates it as open_exported does (nothing changes when that
  // throws), loads it into the package's inactive constant buffer, then
  // makes that buffer the active one.
  void swap_weights(const std::string &weights_path);

  // The package's constants (FQNs), sorted.
  std::vector<std::string> constant_fqns() const;
  // The manifest the constants were checked against (all fields empty for a
  // package + weights file opened without one).
  const ExportManifest &manifest() const;
  // The weights file now in use.
  const std::string &weights_path() const;
  c10::Device device() const;

 private:
  struct Impl;
  explicit ExportedProgram(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;

  friend struct detail::ExportAccess;
};

// Opens an export directory: dir/export.json names the package and the
// weights file (docs/EXPORT.md). Validates (see Rules), loads the package,
// hands it the weights. Throws ExportError, or the core's Error for an
// unreadable, truncated or corrupt weights file.
ST_TORCH_API ExportedProgram open_exported(const std::string &dir,
                                           const ExportOptions &options = {});

// Opens a package and a weights file. The manifest is the weights file's
// "torch_safetensors.export" metadata record when it has one; without one,
// constants are checked against the package alone (names, dtypes, byte
// sizes; the torch version cannot be checked) and found under their FQNs.
ST_TORCH_API ExportedProgram open_exported(const std::string &package_path,
                                           const std::string &weights_path,
                                           const ExportOptions &options = {});

}  // namespace safetensors

#endif  // SAFETENSORS_EXPORT_HPP
