// The one place that reads CPUID features and BORT_ISA / BORT_GEMM (compiled without ISA flags).
#include "gemm/backend.hpp"

#include <cpuid.h>
#include <mkl.h>

#include <cstdlib>
#include <stdexcept>

namespace bort::gemm {

namespace {

// AMX-BF16 and AMX-INT8 (CPUID leaf 7, EDX bits 22 and 25): MKL's AMX kernels run there.
bool has_amx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d >> 22 & 1u) && (d >> 25 & 1u);
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

Backend choose() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!avx2)
    throw std::runtime_error("bort's encoder needs a CPU with AVX2 and FMA (x86-64-v3); this one has neither");
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  const std::string want_isa = env("BORT_ISA"), want_gemm = env("BORT_GEMM");
  if (!want_isa.empty() && want_isa != "avx2" && want_isa != "avx512")
    throw std::runtime_error("BORT_ISA must be 'avx2' or 'avx512', got '" + want_isa + "'");
  if (want_isa == "avx512" && !avx512)
    throw std::runtime_error("BORT_ISA=avx512, but this CPU lacks AVX-512 (F, DQ, BW, VL)");
  if (!want_gemm.empty() && want_gemm != "own" && want_gemm != "mkl")
    throw std::runtime_error("BORT_GEMM must be 'own' or 'mkl', got '" + want_gemm + "'");

  Backend be;
  const bool wide = avx512 && want_isa != "avx2";
  be.isa = wide ? "avx512" : "avx2";
  be.bf16 = wide && __builtin_cpu_supports("avx512bf16");
  be.vnni = wide && __builtin_cpu_supports("avx512vnni");
  be.amx = wide && has_amx();
  be.own.f32 = wide ? avx512::f32 : avx2::f32;
  be.own.bf16 = be.bf16 ? avx512_bf16::bf16 : Kernel{};
  be.own.u8s8 = be.vnni ? avx512_vnni::u8s8 : Kernel{};
  const bool mkl = want_gemm == "mkl" || (want_gemm.empty() && be.amx);
  for (Type t : {Type::F32, Type::BF16, Type::U8S8})
    be.source[static_cast<int>(t)] = !mkl && be.own.get(t) ? Source::Own : Source::Mkl;
  // MKL's u8 × s8 kernels without VNNI sum pairs in saturating int16 (GEMM_NOTES): 7-bit weights.
  be.int8_max = be.vnni ? 127 : 63;
  // MKL follows BORT_ISA too, so the forced-AVX2 path is AVX2 end to end.
  if (!wide) mkl_enable_instructions(MKL_ENABLE_AVX2);
  return be;
}

}  // namespace

std::string Backend::gemm_name(Type t) const {
  if (of(t) == Source::Mkl) return amx && t != Type::F32 ? "mkl-amx" : "mkl";
  return t == Type::F32 ? "own-" + isa : t == Type::BF16 ? "own-avx512bf16" : "own-avx512vnni";
}

std::string Backend::describe() const {
  return isa + " (fp32: " + gemm_name(Type::F32) + ", bf16: " + gemm_name(Type::BF16) +
         ", int8: " + gemm_name(Type::U8S8) + ")";
}

const Backend& backend() {
  static const Backend chosen = choose();
  return chosen;
}

}  // namespace bort::gemm
