// One measurement of benchmarks/bench_export_cpp.py, in a fresh process:
// loading a GPT-2-small-sized program's weights in C++ three ways, then one
// forward pass. Prints one JSON line.
//
// Usage: bench_export MODE PATH [populate]
//   load DIR    safetensors::load(DIR/model.safetensors): the plain C++ load
//   export DIR  safetensors::open_exported(DIR): the package, its weights
//               from safetensors as user-managed constants (no copy)
//   copy DIR    open_exported(DIR) with user_managed = false: the package
//               copies the weights into its own buffer
//   package DIR AOTIModelPackageLoader(DIR/model.pt2) alone: what loading
//               the package without weights costs (nothing runs)
//   baked PKG   torch::inductor::AOTIModelPackageLoader(PKG): the package
//               compiled with its weights inside
// populate: the plain load with MAP_POPULATE (every page read at open).
// Memory: VmRSS, RssAnon (private memory: copies) and RssFile (pages of
// mapped files, shared with the page cache) from /proc/self/status.
#include <safetensors/export.hpp>
#include <safetensors/torch.hpp>

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "VmRSS": kB, from /proc/self/status.
long status_kb(const char *key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':')
      return std::stol(line.substr(n + 1));
  return -1;
}

std::string memory() {
  std::ostringstream s;
  s << "{\"rss_mb\": " << status_kb("VmRSS") / 1024 << ", \"anon_mb\": "
    << status_kb("RssAnon") / 1024 << ", \"file_mb\": " << status_kb("RssFile") / 1024 << "}";
  return s.str();
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 3 || argc > 4 || (argc == 4 && std::strcmp(argv[3], "populate") != 0)) {
    std::fprintf(stderr, "usage: %s load|export|copy|package|baked PATH [populate]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1], path = argv[2];
  const bool populate = argc == 4;
  c10::AutoGradMode no_grad(false);
  // Tokens, as GPT-2 takes them.
  at::Tensor x = at::zeros({1, 64}, at::kLong);
  const std::string before = memory();

  double t0 = now(), t1 = 0;
  at::Tensor y;
  std::optional<safetensors::TensorDict> plain;
  std::optional<safetensors::ExportedProgram> prog;
  std::optional<torch::inductor::AOTIModelPackageLoader> baked;
  if (mode == "load") {
    safetensors::LoadOptions opts;
    opts.populate = populate;
    plain = safetensors::load(path + "/model.safetensors", opts);
    t1 = now();
  } else if (mode == "export" || mode == "copy") {
    safetensors::ExportOptions opts;
    opts.user_managed = mode == "export";
    prog = safetensors::open_exported(path, opts);
    t1 = now();
    y = prog->run({x}).at(0);
  } else if (mode == "package") {
    baked.emplace(path + "/model.pt2");
    t1 = now();
  } else if (mode == "baked") {
    baked.emplace(path);
    t1 = now();
    y = baked->run({x}).at(0);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  const double t2 = now();
  const std::string loaded = memory();
  std::printf("{\"mode\": \"%s\", \"populate\": %s, \"load_s\": %.6f, \"first_run_s\": %.6f, "
              "\"before\": %s, \"after\": %s, \"hwm_mb\": %ld, \"checksum\": %.9g}\n",
              mode.c_str(), populate ? "true" : "false", t1 - t0, y.defined() ? t2 - t1 : 0.0,
              before.c_str(), loaded.c_str(), status_kb("VmHWM") / 1024,
              y.defined() ? y.sum().item<double>() : 0.0);
  return 0;
}
