// Run-time choice of the kernels' instruction set (compiled without ISA flags).
#include "encoder/kernels.hpp"

#include <cstdlib>
#include <stdexcept>

namespace bort::encoder {

namespace {

const Kernels& choose() {
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  if (!has_avx2)
    throw std::runtime_error("bort's encoder needs a CPU with AVX2 and FMA (x86-64-v3); this one has neither");
  const char* forced = std::getenv("BORT_ISA");
  const std::string want = forced ? forced : "";
  if (want == "avx2") return avx2::kernels;
  if (!want.empty() && want != "avx512")
    throw std::runtime_error("BORT_ISA must be 'avx2' or 'avx512', got '" + want + "'");
  return has_avx512 ? avx512::kernels : avx2::kernels;
}

}  // namespace

const Kernels& kernels() {
  static const Kernels& chosen = choose();
  return chosen;
}

std::string isa() { return kernels().isa; }

}  // namespace bort::encoder
