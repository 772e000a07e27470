// Saves two tensors with safetensors::save, loads them back with
// safetensors::load and exits non-zero unless names, dtypes and values match.
#include <safetensors/torch.hpp>

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>

#include <cstdio>

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer OUT.safetensors\n");
    return 2;
  }
  at::Tensor weight = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor steps = at::arange(1, 4, at::kLong);
  safetensors::save(argv[1], {{"weight", weight}, {"steps", steps}});
  safetensors::TensorDict back = safetensors::load(argv[1]);
  // File order is the writer's (by alignment, then name), not insertion order.
  if (back.size() != 2 || !back.contains("weight") || !back.contains("steps") ||
      !at::equal(back.at("weight"), weight) || !at::equal(back.at("steps"), steps) ||
      back.at("steps").scalar_type() != at::kLong) {
    std::fprintf(stderr, "consumer: round trip differs\n");
    return 1;
  }
  std::printf("consumer: %zu tensors round-tripped through %s\n", back.size(), argv[1]);
  return 0;
}
