// load_into / save of torch::nn modules.
#include <safetensors/torch.hpp>

#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <unistd.h>

#include <cstdlib>
#include <map>

#include "cpp_testutil.h"

namespace st = safetensors;

namespace {

struct NetImpl : torch::nn::Module {
  NetImpl(int64_t in, int64_t out) {
    fc = register_module("fc", torch::nn::Linear(in, out));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({out})));
    register_buffer("steps", at::zeros({1}, at::TensorOptions().dtype(at::kLong)));
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(Net);

// Tied weights: one tensor registered under two modules, as a language model
// ties its embedding and output head.
struct SubImpl : torch::nn::Module {
  explicit SubImpl(const at::Tensor &w) { register_parameter("weight", w); }
};
TORCH_MODULE(Sub);

struct TiedImpl : torch::nn::Module {
  TiedImpl() {
    at::Tensor w = at::arange(12, at::TensorOptions().dtype(at::kFloat)).reshape({4, 3});
    register_module("embed", Sub(w));
    register_module("lm_head", Sub(w));
    register_parameter("bias", at::ones({4}));
  }
};
TORCH_MODULE(Tied);

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

TEST(Module, SaveThenLoadIntoAnotherInstance) {
  Net a(4, 3), b(4, 3);
  a->named_buffers()["steps"].fill_(5);
  std::string path = sttest::temp_path("module");
  st::save(path, *a, {{"format", "pt"}}, {false});
  EXPECT_EQ(sorted(st::File(path).names()),
            (std::vector<std::string>{"fc.bias", "fc.weight", "norm.bias", "norm.weight",
                                      "steps"}));
  EXPECT_FALSE(at::equal(a->fc->weight, b->fc->weight));
  st::LoadReport r = st::load_into(*b, path);
  EXPECT_TRUE(r.ok());
  for (const auto &[name, t] : st::state_dict(*a))
    EXPECT_TRUE(at::equal(t, st::state_dict(*b).at(name))) << name;
  // The module owns its memory: not a view of the (now deleted) file.
  unlink(path.c_str());
  EXPECT_TRUE(sttest::mappings_of(path).empty());
  EXPECT_EQ(b->named_buffers()["steps"].item<int64_t>(), 5);
  EXPECT_TRUE(b->fc->weight.requires_grad());
}

TEST(Module, StrictThrowsOnMissingUnexpectedMismatched) {
  Net ref(4, 3);
  std::string path = sttest::temp_path("strict");

  // Missing: the file lacks norm.*.
  auto sd = st::state_dict(*ref);
  st::TensorDict partial;
  for (const auto &[n, t] : sd)
    if (n.rfind("norm.", 0) != 0) partial.insert(n, t);
  st::save(path, partial, {}, {false});
  Net m(4, 3);
  at::Tensor before = m->fc->weight.clone();
  try {
    st::load_into(*m, path);
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_NOT_FOUND);
    EXPECT_EQ(e.name(), "norm.weight");
  }
  EXPECT_TRUE(at::equal(m->fc->weight, before));  // nothing copied

  // Unexpected: an extra tensor.
  st::TensorDict extra = sd;
  extra.insert("head.weight", at::ones({2}));
  st::save(path, extra, {}, {false});
  try {
    st::load_into(*m, path);
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(e.name(), "head.weight");
  }

  // Mismatched shape: saved from a 5 -> 3 net.
  Net wide(5, 3);
  st::save(path, *wide, {}, {false});
  try {
    st::load_into(*m, path);
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_INVALID_TENSOR_INFO);
    EXPECT_EQ(e.name(), "fc.weight");
    EXPECT_NE(std::string(e.what()).find("[3, 5]"), std::string::npos) << e.what();
  }

  // Mismatched dtype.
  st::TensorDict half = sd;
  half.at("norm.bias") = half.at("norm.bias").to(at::kHalf);
  st::save(path, half, {}, {false});
  try {
    st::load_into(*m, path);
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_INVALID_TENSOR_INFO);
    EXPECT_EQ(e.name(), "norm.bias");
  }
  unlink(path.c_str());
}

TEST(Module, NonStrictReportsAndCopiesTheRest) {
  Net ref(4, 3);
  auto sd = st::state_dict(*ref);
  st::TensorDict file_sd;
  file_sd.insert("fc.weight", sd.at("fc.weight"));
  file_sd.insert("fc.bias", at::ones({7}));
  file_sd.insert("extra", at::ones({1}));
  std::string path = sttest::temp_path("lenient");
  st::save(path, file_sd, {}, {false});
  Net m(4, 3);
  st::LoadReport r = st::load_into(*m, path, /*strict=*/false);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(sorted(r.missing), (std::vector<std::string>{"norm.bias", "norm.weight", "steps"}));
  EXPECT_EQ(r.unexpected, (std::vector<std::string>{"extra"}));
  EXPECT_EQ(r.mismatched, (std::vector<std::string>{"fc.bias"}));
  ASSERT_EQ(r.details.size(), 1u);
  EXPECT_NE(r.details[0].find("fc.bias"), std::string::npos);
  EXPECT_TRUE(at::equal(m->fc->weight, ref->fc->weight));
  unlink(path.c_str());
}

TEST(Module, AliasesFillTiedParameters) {
  // A file written by Python with a tied weight stored once.
  std::string record =
      R"({"version":1,"root":{"t":"dict","items":[["fc.weight",{"t":"tensor","name":"fc.weight"}],)"
      R"(["fc.bias",{"t":"tensor","name":"fc.bias"}],["norm.weight",{"t":"tensor","name":"fc.bias"}],)"
      R"(["norm.bias",{"t":"tensor","name":"nb"}],["steps",{"t":"tensor","name":"steps"}]]}})";
  Net ref(3, 3);
  auto sd = st::state_dict(*ref);
  std::string path = sttest::temp_path("tied");
  st::save(path,
           {{"fc.weight", sd.at("fc.weight")}, {"fc.bias", sd.at("fc.bias")},
            {"nb", sd.at("norm.bias")}, {"steps", sd.at("steps")}},
           {{"torch_safetensors.structure", record}}, {false});
  Net m(3, 3);
  EXPECT_TRUE(st::load_into(*m, path).ok());
  EXPECT_TRUE(at::equal(m->norm->weight, ref->fc->bias));
  EXPECT_TRUE(at::equal(m->norm->bias, ref->norm->bias));
  unlink(path.c_str());
}

TEST(Module, TiedWeightsAreStoredOnceAndLoadShared) {
  Tied tied;
  std::string path = sttest::temp_path("tied_save");
  st::save(path, *tied, {}, {false});  // Aliasing::tie by default

  st::File file(path);
  EXPECT_EQ(sorted(file.names()), (std::vector<std::string>{"bias", "embed.weight"}));
  EXPECT_EQ(file.aliases(),
            (std::map<std::string, std::string>{{"lm_head.weight", "embed.weight"}}));
  uint64_t data = 0;
  for (size_t i = 0; i < st_tensor_count(file.c_handle()); ++i) {
    st_tensor_info info;
    ASSERT_EQ(st_tensor_get(file.c_handle(), i, &info), ST_OK);
    data += info.data_end - info.data_begin;
  }
  EXPECT_EQ(data, (12u + 4u) * 4u);  // the tied weight once

  for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
    st::LoadOptions opts;
    opts.backend = backend;
    auto all = st::load(path, opts);
    EXPECT_EQ(all.size(), 3u);
    EXPECT_TRUE(all.at("lm_head.weight").is_alias_of(all.at("embed.weight")));
    EXPECT_TRUE(at::equal(all.at("lm_head.weight"), tied->named_parameters()["embed.weight"]));
  }
  Tied other;
  other->named_parameters()["bias"].data().zero_();
  EXPECT_TRUE(st::load_into(*other, path).ok());
  EXPECT_TRUE(at::equal(other->named_parameters()["bias"], at::ones({4})));

  // Python's torch.load of the same file gives the two names one storage.
  const char *python = std::getenv("ST_TORCH_PYTHON");
  ASSERT_TRUE(python && *python) << "ST_TORCH_PYTHON is not set";
  std::string script =
      "import sys, torch, torch_safetensors\n"
      "sd = torch.load(sys.argv[1])\n"
      "assert sorted(sd) == ['bias', 'embed.weight', 'lm_head.weight'], sorted(sd)\n"
      "a, b = sd['embed.weight'], sd['lm_head.weight']\n"
      "assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr(), 'not shared'\n"
      "assert torch.equal(b, torch.arange(12.0).reshape(4, 3))\n";
  std::string script_path = sttest::temp_path("tied_check") + ".py";
  sttest::write_file(script_path, std::vector<uint8_t>(script.begin(), script.end()));
  std::string cmd = std::string(python) + " " + script_path + " " + path;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  unlink(script_path.c_str());
  unlink(path.c_str());
}

TEST(Module, AliasingPolicies) {
  Tied tied;
  std::string path = sttest::temp_path("policy");
  st::SaveOptions copy{false, st::Aliasing::copy};
  st::save(path, *tied, {}, copy);
  st::File copied(path);
  EXPECT_EQ(copied.size(), 3u);
  EXPECT_TRUE(copied.aliases().empty());
  EXPECT_FALSE(copied.metadata("torch_safetensors.structure").has_value());
  auto all = copied.tensors();
  EXPECT_FALSE(all.at("lm_head.weight").is_alias_of(all.at("embed.weight")));

  st::SaveOptions error{false, st::Aliasing::error};
  try {
    st::save(path, *tied, {}, error);
    FAIL() << "shared memory saved under Aliasing::error";
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(e.name(), "embed.weight");
  }

  // Overlapping views that are not the same view: copies under tie, refused
  // under error.
  at::Tensor base = at::arange(6, at::TensorOptions().dtype(at::kFloat));
  st::TensorDict views{{"all", base}, {"head", base.slice(0, 0, 2)}};
  st::save(path, views, {}, {false});
  st::File overlap(path);
  EXPECT_EQ(overlap.size(), 2u);
  EXPECT_TRUE(overlap.aliases().empty());
  EXPECT_TRUE(at::equal(overlap.tensor("head"), base.slice(0, 0, 2)));
  EXPECT_THROW(st::save(path, views, {}, error), st::Error);

  // Tied tensors need the record: a caller's own is refused, not overwritten.
  try {
    st::save(path, {{"a", base}, {"b", base}}, {{"torch_safetensors.structure", "{}"}}, {false});
    FAIL() << "the caller's record was overwritten";
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_INVALID_ARGUMENT);
  }
  unlink(path.c_str());
}
