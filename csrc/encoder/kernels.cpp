// Run-time choice of the kernels' instruction set: the backend's (gemm/backend.hpp).
#include "encoder/kernels.hpp"

#include "gemm/backend.hpp"

namespace bort::encoder {

const Kernels& kernels() {
  static const Kernels& chosen = gemm::backend().isa == "avx512" ? avx512::kernels : avx2::kernels;
  return chosen;
}

std::string isa() { return kernels().isa; }

}  // namespace bort::encoder
