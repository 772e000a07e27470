// torch::nn::Module support: load_into, state_dict, save(Module). Kept apart
// from torch.cpp because torch/nn/module.h costs most of this TU's compile
// time.
#include <safetensors/torch.hpp>

#include <torch/nn/module.h>

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <set>
#include <sstream>

namespace safetensors {

namespace {

std::string describe_tensor(const std::string &dtype, c10::IntArrayRef shape) {
  std::ostringstream s;
  s << dtype << " [";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

}  // namespace

TensorDict state_dict(const torch::nn::Module &module) {
  TensorDict out;
  for (const auto &p : module.named_parameters(/*recurse=*/true)) out.insert(p.key(), p.value());
  for (const auto &b : module.named_buffers(/*recurse=*/true)) out.insert(b.key(), b.value());
  return out;
}

void save(const std::string &path, const torch::nn::Module &module, const Metadata &metadata,
          const SaveOptions &options) {
  save(path, state_dict(module), metadata, options);
}

LoadReport load_into(torch::nn::Module &module, const std::string &path, bool strict,
                     const LoadOptions &options) {
  File file(path, options.backend, options.populate, options.aliases);
  TensorDict targets = state_dict(module);
  LoadReport report;

  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (destination, source)
  std::set<std::string> used;  // stored names some module key resolved to
  for (const auto &[name, dst] : targets) {
    if (options.filter && !options.filter(name)) continue;
    if (!file.contains(name)) {
      report.missing.push_back(name);
      continue;
    }
    used.insert(file.resolve(name));
    LoadOptions cpu = options;
    cpu.device = c10::Device(c10::kCPU);
    at::Tensor src = file.tensor(name, cpu);
    if (src.scalar_type() != dst.scalar_type() || !src.sizes().equals(dst.sizes())) {
      report.mismatched.push_back(name);
      report.details.push_back(
          name + ": file " + describe_tensor(std::string(c10::toString(src.scalar_type())),
                                             src.sizes()) +
          ", module " + describe_tensor(std::string(c10::toString(dst.scalar_type())),
                                        dst.sizes()));
      continue;
    }
    copies.emplace_back(dst, std::move(src));
  }
  for (const std::string &name : file.names()) {
    if (options.filter && !options.filter(name)) continue;
    if (!targets.contains(name) && !used.count(name)) report.unexpected.push_back(name);
  }

  if (strict) {
    if (!report.missing.empty())
      throw Error(ST_ERR_NOT_FOUND, "module key missing from the file (" +
                      std::to_string(report.missing.size()) + " missing)",
                  ST_NO_OFFSET, report.missing.front());
    if (!report.unexpected.empty())
      throw Error(ST_ERR_INVALID_ARGUMENT, "file tensor not in the module (" +
                      std::to_string(report.unexpected.size()) + " unexpected)",
                  ST_NO_OFFSET, report.unexpected.front());
    if (!report.mismatched.empty())
      throw Error(ST_ERR_INVALID_TENSOR_INFO, "shape or dtype differs: " + report.details.front(),
                  ST_NO_OFFSET, report.mismatched.front());
  }

  c10::AutoGradMode no_grad(false);
  for (auto &[dst, src] : copies) dst.copy_(src);
  return report;
}

}  // namespace safetensors
