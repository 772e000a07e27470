// The export path: a torch.export + AOTInductor program whose weights live
// in safetensors (docs/EXPORT.md), run from C++ with no architecture written
// in torch::nn. export_aoti.py writes the directory.
//
// Usage: deploy_export [--runner PY_OUT.safetensors] [--baked BAKED.pt2] DIR
//
// Checks, exit status 0 when all pass:
//   - DIR opens and runs io.safetensors' "input"; the output is within the
//     tolerance below of the eager output ("output"), and with --runner
//     equals the output of Python's AOTInductor runner bit for bit;
//   - swap_weights(weights2.safetensors) gives io2.safetensors' output;
//   - broken copies (a missing, an extra, a wrong-shape, a wrong-dtype
//     constant; another torch version; a manifest that disagrees with the
//     package; weights whose own manifest record fits another package; a
//     truncated weights file) are refused with their named error
//     by open_exported, and by swap_weights without changing the output;
//   - the package and a plain weights file (no manifest) open and run;
//   - a weights file is unmapped once no constant buffer uses it;
//   - with --baked, a package compiled with its weights is refused.
#include <safetensors/export.hpp>
#include <safetensors/torch.hpp>

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <cstdlib>

namespace fs = std::filesystem;

namespace {

// AOTInductor's generated kernels fuse and reorder what eager runs op by op
// (fp32, CPU), so the outputs differ from eager in the last bits; they equal
// Python's AOTInductor runner bit for bit (the same kernels). Measured with
// torch 2.13 on x86-64 (AVX-512): max |diff| vs eager 4.8e-7 (mlp, |output|
// up to 2.1) and 2.6e-6 (block, up to 6.0). The bound, |diff| <= 5e-5 +
// 1e-5 x |eager|, leaves room for other CPUs' vector widths.
constexpr double kAtol = 5e-5, kRtol = 1e-5;

int failures = 0;

void report(bool ok, const std::string &what) {
  std::printf("%s  %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

// max |a - b|, or -1 when the shapes or dtypes differ.
double max_diff(const at::Tensor &a, const at::Tensor &b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return -1;
  return a.sub(b).abs().max().item<double>();
}

bool close(const at::Tensor &y, const at::Tensor &expected, double *diff) {
  *diff = max_diff(y, expected);
  if (*diff < 0) return false;
  return y.sub(expected).abs().sub(expected.abs().mul(kRtol)).max().item<double>() <= kAtol;
}

bool bitwise(const at::Tensor &a, const at::Tensor &b) {
  at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(ca.const_data_ptr(), cb.const_data_ptr(), cb.nbytes()) == 0;
}

at::Tensor run_one(safetensors::ExportedProgram &prog, const at::Tensor &x) {
  std::vector<at::Tensor> out = prog.run({x});
  return out.at(0);
}

// How many mappings of path this process has (/proc/self/maps).
size_t mappings(const std::string &path) {
  const std::string name = fs::canonical(path).string();
  std::ifstream in("/proc/self/maps");
  size_t n = 0;
  for (std::string line; std::getline(in, line);)
    if (line.size() > name.size() && line.compare(line.size() - name.size(), name.size(), name) == 0)
      ++n;
  return n;
}

std::string read_text(const fs::path &p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path &p, const std::string &text) {
  std::ofstream(p, std::ios::binary) << text;
}

// Runs f; true when it throws ExportError of kind want.
bool throws_kind(const std::function<void()> &f, safetensors::ExportErrc want, std::string *what) {
  try {
    f();
  } catch (const safetensors::ExportError &e) {
    *what = e.what();
    return e.kind() == want;
  } catch (const std::exception &e) {
    *what = e.what();
    return false;
  }
  *what = "no error";
  return false;
}

// Runs f; true when it throws the core's Error (not an ExportError).
bool throws_core(const std::function<void()> &f, std::string *what) {
  try {
    f();
  } catch (const safetensors::ExportError &e) {
    *what = e.what();
    return false;
  } catch (const safetensors::Error &e) {
    *what = e.what();
    return true;
  } catch (const std::exception &e) {
    *what = e.what();
    return false;
  }
  *what = "no error";
  return false;
}

// A broken copy of dir in a fresh directory: the package linked, export.json
// (optionally edited), and weights written by make_weights.
struct BrokenDir {
  fs::path path;
  BrokenDir(const fs::path &dir, const fs::path &root, const std::string &name,
            const std::string &manifest_text) {
    path = root / name;
    fs::create_directories(path);
    fs::create_symlink(fs::absolute(dir / "model.pt2"), path / "model.pt2");
    write_text(path / "export.json", manifest_text);
  }
  fs::path weights() const { return path / "model.safetensors"; }
};

void check_errors(const fs::path &dir, safetensors::ExportedProgram &prog, const at::Tensor &x,
                  const at::Tensor &y_expected) {
  char tmpl[] = "/tmp/deploy_export.XXXXXX";
  if (!mkdtemp(tmpl)) {
    report(false, "mkdtemp");
    return;
  }
  fs::path root(tmpl);
  const std::string manifest = read_text(dir / "export.json");
  safetensors::TensorDict good = safetensors::load((dir / "model.safetensors").string());
  safetensors::Metadata meta = safetensors::load_metadata((dir / "model.safetensors").string());
  const std::string first = good.begin()->first;

  auto variant = [&](const std::string &name, auto &&edit) {
    safetensors::TensorDict t;
    for (const auto &[k, v] : good) t.insert(k, v);
    edit(t);
    BrokenDir d(dir, root, name, manifest);
    safetensors::save(d.weights().string(), t, meta, {false, safetensors::Aliasing::copy});
    return d;
  };
  auto without_first = [&](safetensors::TensorDict &t) {
    safetensors::TensorDict u;
    for (const auto &[k, v] : t)
      if (k != first) u.insert(k, v);
    t = std::move(u);
  };

  struct Case {
    std::string name;
    safetensors::ExportErrc kind;
    fs::path dir;
  };
  std::vector<Case> cases;
  cases.push_back({"missing", safetensors::ExportErrc::missing_constant,
                   variant("missing", without_first).path});
  cases.push_back({"unexpected", safetensors::ExportErrc::unexpected_constant,
                   variant("unexpected", [](safetensors::TensorDict &t) {
                     t.insert("extra.weight", t.begin()->second.clone());
                   }).path});
  cases.push_back({"shape", safetensors::ExportErrc::shape_mismatch,
                   variant("shape", [&](safetensors::TensorDict &t) {
                     at::Tensor &v = t.at(first);
                     v = v.flatten().narrow(0, 0, v.numel() - 1).clone();
                   }).path});
  cases.push_back({"dtype", safetensors::ExportErrc::dtype_mismatch,
                   variant("dtype", [&](safetensors::TensorDict &t) {
                     t.at(first) = t.at(first).to(at::kDouble);
                   }).path});
  {
    // The weights file's own manifest record fits another package.
    safetensors::Metadata other = meta;
    std::string &record = other.at("torch_safetensors.export");
    record.replace(record.find("\"F32\""), 5, "\"F16\"");
    BrokenDir d(dir, root, "record", manifest);
    safetensors::save(d.weights().string(), good, other, {false, safetensors::Aliasing::copy});
    cases.push_back({"weights for another package", safetensors::ExportErrc::bad_manifest,
                     d.path});
  }
  {
    const std::string torch = "\"" + prog.manifest().torch + "\"";
    std::string edited = manifest;
    edited.replace(edited.find(torch), torch.size(), "\"1.0.0\"");
    BrokenDir d(dir, root, "version", edited);
    fs::copy_file(dir / "model.safetensors", d.weights());
    cases.push_back({"torch version", safetensors::ExportErrc::torch_version, d.path});
  }
  {
    // The manifest claims another dtype for a constant than the package has.
    std::string edited = manifest;
    size_t at = edited.find("\"F32\"");
    if (at != std::string::npos) edited.replace(at, 5, "\"F64\"");
    BrokenDir d(dir, root, "manifest", edited);
    fs::copy_file(dir / "model.safetensors", d.weights());
    cases.push_back({"manifest disagrees with the package", safetensors::ExportErrc::bad_manifest,
                     d.path});
  }

  for (const Case &c : cases) {
    std::string what;
    bool ok = throws_kind([&] { safetensors::open_exported(c.dir.string()); }, c.kind, &what);
    report(ok, "open_exported, " + c.name + ": " + what);
    if (c.dir.filename() == "version" || c.dir.filename() == "manifest")
      continue;  // the directory's own weights file: nothing to swap in
    ok = throws_kind([&] { prog.swap_weights((c.dir / "model.safetensors").string()); }, c.kind,
                     &what);
    report(ok && bitwise(run_one(prog, x), y_expected),
           "swap_weights refuses " + c.name + ", output unchanged");
  }

  // A truncated weights file: the C core's error.
  BrokenDir t(dir, root, "truncated", manifest);
  fs::copy_file(dir / "model.safetensors", t.weights());
  fs::resize_file(t.weights(), fs::file_size(t.weights()) / 2);
  std::string what;
  bool ok = throws_core([&] { safetensors::open_exported(t.path.string()); }, &what);
  report(ok, "open_exported, truncated weights: the core's error: " + what);
  ok = throws_core([&] { prog.swap_weights(t.weights().string()); }, &what) &&
       bitwise(run_one(prog, x), y_expected);
  report(ok, "swap_weights refuses truncated weights, output unchanged: " + what);

  // The package and a plain weights file, no manifest anywhere: checked
  // against the package's own names, dtypes and sizes.
  safetensors::save((root / "plain.safetensors").string(), good, {},
                    {false, safetensors::Aliasing::copy});
  try {
    auto plain = safetensors::open_exported((dir / "model.pt2").string(),
                                            (root / "plain.safetensors").string());
    report(bitwise(run_one(plain, x), y_expected), "package + plain weights file runs");
  } catch (const std::exception &e) {
    report(false, std::string("package + plain weights file: ") + e.what());
  }
  safetensors::TensorDict plain_missing;
  for (const auto &[k, v] : good)
    if (k != first) plain_missing.insert(k, v);
  safetensors::save((root / "plain_missing.safetensors").string(), plain_missing, {},
                    {false, safetensors::Aliasing::copy});
  ok = throws_kind(
      [&] {
        safetensors::open_exported((dir / "model.pt2").string(),
                                   (root / "plain_missing.safetensors").string());
      },
      safetensors::ExportErrc::missing_constant, &what);
  report(ok, "package + plain weights file, missing: " + what);

  fs::remove_all(root);
}

}  // namespace

int main(int argc, char **argv) {
  std::string runner_out, baked;
  int i = 1;
  for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
    if (std::strcmp(argv[i], "--runner") == 0) runner_out = argv[i + 1];
    else if (std::strcmp(argv[i], "--baked") == 0) baked = argv[i + 1];
    else break;
  }
  if (i + 1 != argc) {
    std::fprintf(stderr,
                 "usage: %s [--runner PY_OUT.safetensors] [--baked BAKED.pt2] DIR\n", argv[0]);
    return 2;
  }
  const fs::path dir(argv[i]);
  at::set_num_threads(1);  // as the Python runner: the same kernels, the same order
  c10::AutoGradMode no_grad(false);
  try {
    auto prog = safetensors::open_exported(dir.string());
    std::printf("%s: %zu constants, torch %s\n", dir.c_str(), prog.constant_fqns().size(),
                prog.manifest().torch.c_str());
    auto io = safetensors::load((dir / "io.safetensors").string());
    const at::Tensor &x = io.at("input");
    at::Tensor y = run_one(prog, x);
    double diff;
    bool ok = close(y, io.at("output"), &diff);
    report(ok, "output vs eager: max |diff| " + num(diff) + ", max |eager| " +
                   num(io.at("output").abs().max().item<double>()) + " (bound " + num(kAtol) +
                   " + " + num(kRtol) + " x |eager|)");
    if (!runner_out.empty()) {
      auto py = safetensors::load(runner_out);
      report(bitwise(y, py.at("output")), "output equals Python's AOTInductor runner bitwise");
    }

    check_errors(dir, prog, x, y);

    auto io2 = safetensors::load((dir / "io2.safetensors").string());
    prog.swap_weights((dir / "weights2.safetensors").string());
    at::Tensor y2 = run_one(prog, x);
    ok = close(y2, io2.at("output"), &diff) && !bitwise(y2, y);
    report(ok, "after swap_weights(weights2): output vs eager with weights2: max |diff| " +
                   num(diff));
    prog.swap_weights((dir / "model.safetensors").string());
    report(bitwise(run_one(prog, x), y), "swapping the first weights back gives the first output");

    {
      // The program owns its weights: a swapped-out file is unmapped at the
      // swap after next, and everything at the program's end.
      const std::string w2 = (dir / "weights2.safetensors").string();
      const size_t model_maps = mappings((dir / "model.safetensors").string());
      const size_t w2_maps = mappings(w2);  // prog's inactive buffer may hold it
      {
        auto other = safetensors::open_exported(dir.string());
        other.swap_weights(w2);
        other.swap_weights((dir / "model.safetensors").string());
        const size_t held = mappings(w2);
        other.swap_weights((dir / "model.safetensors").string());
        ok = held == w2_maps + 1 && mappings(w2) == w2_maps;
      }
      report(ok && mappings((dir / "model.safetensors").string()) == model_maps,
             "weights are unmapped once no buffer of the package uses them");
    }

    if (!baked.empty()) {
      std::string what;
      ok = throws_kind(
          [&] { safetensors::open_exported(baked, (dir / "model.safetensors").string()); },
          safetensors::ExportErrc::weights_baked_in, &what);
      report(ok, "package with weights baked in: " + what);
    }
  } catch (const std::exception &e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  std::printf("%s: %s\n", dir.c_str(), failures ? "FAILED" : "all checks pass");
  return failures ? 1 : 0;
}
