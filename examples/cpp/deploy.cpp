// The TorchScript-free deployment path: the model's architecture written
// with torch::nn, its weights loaded from the safetensors file Python wrote
// with torch.save(model.state_dict(), path, format="safetensors").
//
// Usage: deploy MODEL.safetensors IO.safetensors
// Exit status 0 when the output equals Python's bit for bit.
#include <safetensors/torch.hpp>

#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gelu.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cmath>
#include <cstdio>
#include <cstring>

namespace {

constexpr int64_t kIn = 16, kModel = 32, kHeads = 4, kFF = 64, kOut = 8;

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t in, int64_t hidden, int64_t out)
      : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, out))) {}
  at::Tensor forward(const at::Tensor &x) { return fc2(at::gelu(fc1(x))); }
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(MLP);

torch::nn::LayerNorm layer_norm(int64_t d) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({d}));
}

struct BlockImpl : torch::nn::Module {
  BlockImpl()
      : ln1(register_module("ln1", layer_norm(kModel))),
        qkv(register_module("qkv", torch::nn::Linear(kModel, 3 * kModel))),
        proj(register_module("proj", torch::nn::Linear(kModel, kModel))),
        ln2(register_module("ln2", layer_norm(kModel))),
        fc1(register_module("fc1", torch::nn::Linear(kModel, kFF))),
        fc2(register_module("fc2", torch::nn::Linear(kFF, kModel))) {}

  at::Tensor forward(at::Tensor x) {
    int64_t b = x.size(0), t = x.size(1), d = x.size(2), hd = d / kHeads;
    auto parts = qkv(ln1(x)).chunk(3, -1);
    at::Tensor q = parts[0].reshape({b, t, kHeads, hd}).transpose(1, 2);
    at::Tensor k = parts[1].reshape({b, t, kHeads, hd}).transpose(1, 2);
    at::Tensor v = parts[2].reshape({b, t, kHeads, hd}).transpose(1, 2);
    at::Tensor att = q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(hd)));
    att = att.softmax(-1);
    at::Tensor y = att.matmul(v).transpose(1, 2).reshape({b, t, d});
    x = x + proj(y);
    return x + fc2(at::gelu(fc1(ln2(x))));
  }
  torch::nn::LayerNorm ln1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Block);

struct ModelImpl : torch::nn::Module {
  ModelImpl()
      : embed(register_module("embed", MLP(kIn, kModel, kModel))),
        block(register_module("block", Block())),
        head(register_module("head", torch::nn::Linear(kModel, kOut))) {
    out_scale = register_buffer("out_scale", at::full({kOut}, 1.0));
  }
  at::Tensor forward(const at::Tensor &x) { return head(block(embed(x))) * out_scale; }
  MLP embed;
  Block block;
  torch::nn::Linear head;
  at::Tensor out_scale;
};
TORCH_MODULE(Model);

}  // namespace

int main(int argc, char **argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors IO.safetensors\n", argv[0]);
    return 2;
  }
  at::set_num_threads(1);  // as export.py: the same kernels, the same order
  try {
    Model model;
    model->eval();
    // Strict: every parameter and buffer must be in the file, with its shape
    // and dtype, and the file must hold nothing else.
    safetensors::load_into(*model, argv[1]);

    auto io = safetensors::load(argv[2]);
    c10::AutoGradMode no_grad(false);
    at::Tensor y = model->forward(io.at("input"));
    const at::Tensor &expected = io.at("output");
    bool same = y.sizes() == expected.sizes() && y.scalar_type() == expected.scalar_type() &&
                std::memcmp(y.contiguous().const_data_ptr(), expected.const_data_ptr(),
                            expected.nbytes()) == 0;
    double diff = (y - expected).abs().max().item<double>();
    std::printf("C++ output %s Python's bitwise (%lld values, max |diff| %g)\n",
                same ? "equals" : "DIFFERS FROM", static_cast<long long>(y.numel()), diff);
    return same ? 0 : 1;
  } catch (const safetensors::Error &e) {
    std::fprintf(stderr, "safetensors error: %s\n", e.what());
    return 1;
  }
}
